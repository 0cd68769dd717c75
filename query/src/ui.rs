//! The built-in web UI: one static page (no build step) with an expression box, a table
//! of the instant result and an SVG graph of the range result.

/// The page served at `/`.
pub const INDEX_HTML: &str = r##"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Norn query</title>
<style>
body{font-family:sans-serif;margin:1em 2em;color:#222}
#expr{width:70%;font-family:monospace;font-size:14px;padding:4px}
table{border-collapse:collapse;margin-top:1em}td,th{border:1px solid #ccc;padding:3px 8px;font-family:monospace;font-size:13px}
#error{color:#b00;white-space:pre-wrap}#warn{color:#a60;white-space:pre-wrap}
svg{border:1px solid #ccc;margin-top:1em}.tabs button.on{font-weight:bold}
</style></head><body>
<h2>Norn query</h2>
<form id="f"><input id="expr" name="expr" placeholder="Expression (e.g. up)" autofocus>
<select id="range"><option value="300">5m</option><option value="3600" selected>1h</option><option value="21600">6h</option><option value="86400">1d</option></select>
<label><input type="checkbox" id="dedup" checked> dedup</label>
<button type="submit" id="run">Execute</button></form>
<div class="tabs"><button id="tabTable" class="on" type="button">Table</button><button id="tabGraph" type="button">Graph</button></div>
<div id="error"></div><div id="warn"></div>
<div id="table"><table id="result"><thead><tr><th>Series</th><th>Value</th></tr></thead><tbody></tbody></table></div>
<div id="graph" style="display:none"><svg id="svg" width="900" height="360"></svg><div id="legend"></div></div>
<script>
const $=id=>document.getElementById(id);
let mode='table';
function labels(m){const k=Object.keys(m);const n=m.__name__||'';const r=k.filter(x=>x!=='__name__').map(x=>x+'="'+m[x]+'"');return n+'{'+r.join(', ')+'}';}
function show(j){$('error').textContent='';$('warn').textContent=(j.warnings||[]).join('\n');
 if(j.status!=='success'){$('error').textContent=j.errorType+': '+j.error;return null;}return j.data;}
async function api(path,params){const b=new URLSearchParams(params);
 const r=await fetch(path,{method:'POST',headers:{'Content-Type':'application/x-www-form-urlencoded'},body:b});return r.json();}
async function runTable(q){const d=show(await api('api/v1/query',{query:q,dedup:$('dedup').checked}));const tb=$('result').tBodies[0];tb.innerHTML='';if(!d)return;
 let rows=[];if(d.resultType==='vector')rows=d.result.map(s=>[labels(s.metric),s.value?s.value[1]:JSON.stringify(s.histogram[1])]);
 else if(d.resultType==='matrix')rows=d.result.map(s=>[labels(s.metric),(s.values||[]).map(v=>v[1]+' @'+v[0]).join('\n')]);
 else rows=[['scalar',String(d.result[1])]];
 for(const [a,b] of rows){const tr=tb.insertRow();tr.insertCell().textContent=a;tr.insertCell().textContent=b;}
 if(!rows.length){const tr=tb.insertRow();const c=tr.insertCell();c.colSpan=2;c.textContent='Empty query result';}}
async function runGraph(q){const end=Date.now()/1000,range=+$('range').value,start=end-range,step=Math.max(1,Math.round(range/250));
 const d=show(await api('api/v1/query_range',{query:q,start,end,step,dedup:$('dedup').checked}));const svg=$('svg');svg.innerHTML='';$('legend').innerHTML='';if(!d)return;
 const ss=d.result.map(s=>({m:labels(s.metric),p:(s.values||[]).map(v=>[+v[0],+v[1]]).filter(v=>isFinite(v[1]))}));
 let lo=Infinity,hi=-Infinity;for(const s of ss)for(const p of s.p){lo=Math.min(lo,p[1]);hi=Math.max(hi,p[1]);}
 if(!isFinite(lo)){svg.innerHTML='<text x="10" y="20">no data</text>';return;}if(hi===lo){hi+=1;lo-=1;}
 const W=900,H=360,x=t=>40+(t-start)/(end-start)*(W-50),y=v=>H-20-(v-lo)/(hi-lo)*(H-40);
 svg.innerHTML='<text x="2" y="14" font-size="11">'+hi.toPrecision(4)+'</text><text x="2" y="'+(H-22)+'" font-size="11">'+lo.toPrecision(4)+'</text>';
 ss.forEach((s,i)=>{const c='hsl('+(i*67%360)+',70%,40%)';const pl=document.createElementNS('http://www.w3.org/2000/svg','polyline');
  pl.setAttribute('fill','none');pl.setAttribute('stroke',c);pl.setAttribute('points',s.p.map(p=>x(p[0])+','+y(p[1])).join(' '));svg.appendChild(pl);
  const l=document.createElement('div');l.style.color=c;l.textContent=s.m;$('legend').appendChild(l);});}
function run(){const q=$('expr').value;if(!q)return;history.replaceState(null,'','?g0.expr='+encodeURIComponent(q)+'&tab='+mode);
 (mode==='table'?runTable(q):runGraph(q)).catch(e=>{$('error').textContent=String(e);});}
$('f').onsubmit=e=>{e.preventDefault();run();};
$('tabTable').onclick=()=>{mode='table';$('table').style.display='';$('graph').style.display='none';$('tabTable').className='on';$('tabGraph').className='';run();};
$('tabGraph').onclick=()=>{mode='graph';$('table').style.display='none';$('graph').style.display='';$('tabGraph').className='on';$('tabTable').className='';run();};
const u=new URLSearchParams(location.search);if(u.get('g0.expr')){$('expr').value=u.get('g0.expr');if(u.get('tab')==='graph')$('tabGraph').onclick();else run();}
</script></body></html>
"##;
