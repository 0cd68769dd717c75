//! The querier's endpoint set reads resolv.conf again at every refresh, as Go's resolver
//! (which Thanos uses) does: a search list changed after start applies to the next
//! refresh, so a short `dnssrv+` name starts resolving without a restart. The DNS server
//! is dnsmasq on a loopback port; the endpoint set is given a resolv.conf of its own.

use std::time::Duration;

use norn_query::endpoints::{EndpointSet, EndpointSetConfig, EndpointSpec};
use norn_testkit::dns::Dnsmasq;

#[tokio::test]
async fn search_list_change_applies_at_the_next_refresh() {
    let work = norn_testkit::tempdir().unwrap();
    // Only `_grpc._tcp.recv.a.test` exists; its SRV record points at port 10901.
    let Some(dns) = Dnsmasq::start(work.path(), "_grpc._tcp.recv.a.test", "recv.a.test", &[10901]) else { return };
    let conf = work.path().join("resolv.conf");
    std::fs::write(&conf, "nameserver 127.0.0.1\nsearch b.test\noptions ndots:5\n").unwrap();
    let set = EndpointSet::with_resolv_conf(
        EndpointSetConfig {
            specs: vec![EndpointSpec::parse("dnssrv+_grpc._tcp.recv").unwrap()],
            sd_files: vec![],
            dns_server: Some(format!("127.0.0.1:{}", dns.port).parse().unwrap()),
            info_timeout: Duration::from_millis(200),
        },
        conf.clone(),
    );
    let addrs = |set: &EndpointSet| set.all().iter().map(|e| e.addr.clone()).collect::<Vec<_>>();
    set.refresh().await;
    assert!(addrs(&set).is_empty(), "resolved through search domain b.test: {:?}", addrs(&set));

    std::fs::write(&conf, "nameserver 127.0.0.1\nsearch a.test\noptions ndots:5\n").unwrap();
    set.refresh().await;
    assert_eq!(addrs(&set), ["127.0.0.1:10901"], "search domain a.test not applied after resolv.conf changed");
}
