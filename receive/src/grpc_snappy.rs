//! gRPC `snappy` request compression as Thanos uses it (`grpc-encoding: snappy`, the
//! snappy *framing* format — `pkg/extgrpc/snappy`). Thanos receivers compress forwarded
//! writes with it by default; tonic has no pluggable codecs, so this layer turns
//! compressed request messages into plain ones before tonic sees them. Responses stay
//! uncompressed, which gRPC clients always accept.

use std::io::Read;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use futures::future::BoxFuture;
use http_body_util::BodyExt;
use tonic::body::Body;
use tower::{Layer, Service};

/// Adds snappy request decompression to a gRPC server; `limit` bounds each
/// decompressed message.
#[derive(Debug, Clone, Copy)]
pub struct SnappyLayer {
    pub limit: usize,
}

impl<S> Layer<S> for SnappyLayer {
    type Service = Snappy<S>;

    fn layer(&self, inner: S) -> Snappy<S> {
        Snappy { inner, limit: self.limit }
    }
}

/// The service built by [`SnappyLayer`].
#[derive(Debug, Clone)]
pub struct Snappy<S> {
    inner: S,
    limit: usize,
}

/// Rewrites length-prefixed gRPC messages: each compressed message (flag 1) is
/// decompressed from the snappy framing format and re-emitted with flag 0. `None` when
/// the body is not a sequence of well-formed messages or a message does not decompress
/// within `limit` bytes.
pub fn decompress_messages(body: &[u8], limit: usize) -> Option<Bytes> {
    let mut out = BytesMut::with_capacity(body.len() * 2);
    let mut rest = body;
    while !rest.is_empty() {
        if rest.len() < 5 {
            return None;
        }
        let flag = rest[0];
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let msg = rest.get(5..5 + len)?;
        rest = &rest[5 + len..];
        match flag {
            0 => {
                out.put_u8(0);
                out.put_u32(len as u32);
                out.put_slice(msg);
            }
            1 => {
                let mut plain = Vec::new();
                let mut r = snap::read::FrameDecoder::new(msg).take(limit as u64 + 1);
                r.read_to_end(&mut plain).ok()?;
                if plain.len() > limit || plain.len() > u32::MAX as usize {
                    return None;
                }
                out.put_u8(0);
                out.put_u32(plain.len() as u32);
                out.put_slice(&plain);
            }
            _ => return None,
        }
    }
    Some(out.freeze())
}

impl<S, R> Service<http::Request<Body>> for Snappy<S>
where
    S: Service<http::Request<Body>, Response = R> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = R;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<R, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let snappy = req.headers().get("grpc-encoding").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"snappy"));
        // The clone is ready-less; take the polled one and leave the clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if !snappy {
            return Box::pin(inner.call(req));
        }
        let limit = self.limit;
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            // Bounded as the decompressed messages are (plus snappy's worst-case growth of
            // incompressible input): a body past it is cut off and reaches tonic empty,
            // which refuses it, instead of being held whole in memory.
            let bound = limit.saturating_add(limit / 6).saturating_add(1 << 10);
            let collected = match http_body_util::Limited::new(body, bound).collect().await {
                Ok(c) => c.to_bytes(),
                Err(_) => Bytes::new(),
            };
            // Undecodable input goes through unchanged: tonic then answers with its own
            // error for the unsupported encoding or the broken message.
            let body = match decompress_messages(&collected, limit) {
                Some(plain) => {
                    parts.headers.remove("grpc-encoding");
                    plain
                }
                None => collected,
            };
            inner.call(http::Request::from_parts(parts, Body::new(http_body_util::Full::new(body)))).await
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn framed(msg: &[u8]) -> Vec<u8> {
        let mut w = snap::write::FrameEncoder::new(Vec::new());
        w.write_all(msg).unwrap();
        w.into_inner().unwrap()
    }

    fn frame(flag: u8, m: &[u8]) -> Vec<u8> {
        let mut v = vec![flag];
        v.extend_from_slice(&(m.len() as u32).to_be_bytes());
        v.extend_from_slice(m);
        v
    }

    #[test]
    fn messages_are_decompressed() {
        let mut body = frame(1, &framed(b"hello world"));
        body.extend(frame(0, b"plain"));
        let got = decompress_messages(&body, 1 << 20).unwrap();
        let mut want = frame(0, b"hello world");
        want.extend(frame(0, b"plain"));
        assert_eq!(&got[..], &want[..]);
    }

    #[test]
    fn bad_input_is_refused() {
        assert!(decompress_messages(&[1, 0, 0], 100).is_none(), "short header");
        assert!(decompress_messages(&frame(1, b"not snappy"), 100).is_none());
        assert!(decompress_messages(&frame(2, b"x"), 100).is_none(), "unknown flag");
        let mut trunc = frame(0, b"abc");
        trunc.truncate(6);
        assert!(decompress_messages(&trunc, 100).is_none());
        let big = framed(&vec![0u8; 10_000]);
        assert!(decompress_messages(&frame(1, &big), 1000).is_none(), "over the limit");
    }

    /// Compresses request messages like a Thanos peer does (test-side counterpart).
    #[derive(Clone)]
    struct Compress<S>(S);

    impl<S> Service<http::Request<Body>> for Compress<S>
    where
        S: Service<http::Request<Body>> + Clone + Send + 'static,
        S::Future: Send + 'static,
    {
        type Response = S::Response;
        type Error = S::Error;
        type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            self.0.poll_ready(cx)
        }

        fn call(&mut self, req: http::Request<Body>) -> Self::Future {
            let clone = self.0.clone();
            let mut inner = std::mem::replace(&mut self.0, clone);
            Box::pin(async move {
                let (mut parts, body) = req.into_parts();
                let raw = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                let mut out = Vec::new();
                let mut rest = &raw[..];
                while rest.len() >= 5 {
                    let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
                    out.extend(frame(1, &framed(&rest[5..5 + len])));
                    rest = &rest[5 + len..];
                }
                parts.headers.insert("grpc-encoding", http::HeaderValue::from_static("snappy"));
                inner
                    .call(http::Request::from_parts(parts, Body::new(http_body_util::Full::new(Bytes::from(out)))))
                    .await
            })
        }
    }

    #[derive(Debug, Default, Clone)]
    struct Recorder(std::sync::Arc<parking_lot::Mutex<Vec<norn_storeapi::thanos::WriteRequest>>>);

    #[tonic::async_trait]
    impl norn_storeapi::thanos::writeable_store_server::WriteableStore for Recorder {
        async fn remote_write(
            &self,
            req: tonic::Request<norn_storeapi::thanos::WriteRequest>,
        ) -> Result<tonic::Response<norn_storeapi::thanos::WriteResponse>, tonic::Status> {
            self.0.lock().push(req.into_inner());
            Ok(tonic::Response::new(norn_storeapi::thanos::WriteResponse {}))
        }
    }

    #[tokio::test]
    async fn tonic_server_accepts_snappy_compressed_requests() {
        use norn_storeapi::thanos::writeable_store_client::WriteableStoreClient;
        use norn_storeapi::thanos::writeable_store_server::WriteableStoreServer;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let rec = Recorder::default();
        let server = tonic::transport::Server::builder()
            .layer(SnappyLayer { limit: 1 << 20 })
            .add_service(WriteableStoreServer::new(rec.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l));
        tokio::spawn(server);
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
        let mut c = WriteableStoreClient::new(Compress(ch));
        let req = norn_storeapi::thanos::WriteRequest { tenant: "t".into(), replica: 2, ..Default::default() };
        c.remote_write(req.clone()).await.unwrap();
        assert_eq!(rec.0.lock().as_slice(), &[req]);
    }
}
