"""One self-contained HTML page from attribution records (`analysis.explain`'s schema): no network at all (inline
CSS and JS, frames embedded as data URIs), readable offline in any browser.

`render(records)` shows, per record: the sampled frames as a strip grouped by temporal group with their
timestamps, and the same frames in the order the temporally perturbed input shows them; the response with one
element per token (`<span class="tok">`), shaded by the visual, temporal or entropy score or marked by the
key-token union, switched with one control for the whole page; the tokens each signal selected marked; on hover,
the token's three scores, whether each signal selected it, and its log-probability under the full, visually
perturbed and temporally perturbed input; the temporal permutation; the settings and selection statistics.
Several records get a selector. Missing parts (no frames, no log-probabilities, no permutation: e.g. a training
rollout log) are left out or shown as "-".

Shading: the background of a token under signal s has opacity MAX_OPACITY * sqrt(score / max score of s in that
response) (0 for an undefined score, which gets a dotted underline instead); the tokens s selected get a solid
underline in the signal's colour. In the union view the key tokens get a light fill and one stripe per signal
that selected them. Switching signals only changes a class on <body>: each token's shade per signal is a CSS
variable.

The page's URL hash sets the first view: `#signal=temporal`, `#record=2` (combinable with `&`). `#selftest` makes
the page operate its own controls (each signal switch, the record selector, a hover) and write what it saw as
JSON into `<pre id="selftest-result">` (for tests driving a headless browser with --dump-dom).
"""

from __future__ import annotations

import html
import json
import math
from typing import Sequence

SIGNAL_VIEWS = ("visual", "temporal", "entropy", "union")
MAX_OPACITY = 0.6  # of the highest-scoring token's shade (the text stays readable on it)
COLOURS = {"visual": (37, 99, 235), "temporal": (234, 88, 12), "entropy": (13, 148, 136)}
LABELS = {"visual": "Visual", "temporal": "Temporal", "entropy": "Entropy", "union": "Key tokens (union)"}
VAR = {"visual": "--v", "temporal": "--t", "entropy": "--e"}


def _esc(x) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def _json_for_script(obj) -> str:
    """JSON safe inside <script>: no '<', '>' or '&' characters (escaped as \\u003c...)."""
    return (json.dumps(obj, separators=(",", ":"), allow_nan=False)
            .replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


def _finite(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def shade_levels(scores: Sequence) -> list[float | None]:
    """Opacity per token: sqrt(score / max valid score) (None where the score is undefined)."""
    vals = [_finite(s) for s in scores]
    top = max((abs(v) for v in vals if v is not None), default=0.0)
    return [None if v is None else (math.sqrt(abs(v) / top) if top > 0 else 0.0) for v in vals]


def _get(record: dict, key: str, signal: str, n: int, default=None) -> list:
    values = (record.get(key) or {}).get(signal)
    if values is None or len(values) != n:
        return [default] * n
    return list(values)


def _stripes(flags: dict[str, bool]) -> str:
    """Bottom stripes (3 px each) of the signals that selected a token, for the union view."""
    parts, y = [], 0
    for s in ("visual", "temporal", "entropy"):
        if flags.get(s):
            r, g, b = COLOURS[s]
            parts.append(f"rgb({r},{g},{b}) {y}px {y + 3}px")
            y += 3
    if not parts:
        return "none"
    return "linear-gradient(to top, " + ", ".join(parts) + f", transparent {y}px)"


def _tokens_html(record: dict) -> str:
    tokens = [str(t) for t in record.get("tokens") or []]
    n = len(tokens)
    levels = {s: shade_levels(_get(record, "scores", s, n)) for s in ("visual", "temporal", "entropy")}
    selected = {s: [bool(x) for x in _get(record, "selected", s, n, False)] for s in SIGNAL_VIEWS}
    special = list(record.get("special") or [False] * n)
    out = []
    for i, text in enumerate(tokens):
        classes = ["tok"]
        style = []
        for s in ("visual", "temporal", "entropy"):
            lv = levels[s][i]
            if lv is None:
                classes.append("n" + s[0])  # undefined score
                lv = 0.0
            style.append(f"{VAR[s]}:{lv:.3f}")
            if selected[s][i]:
                classes.append("s" + s[0])
        if selected["union"][i]:
            classes.append("su")
        if i < len(special) and special[i]:
            classes.append("special")
        style.append(f"--u:{_stripes({s: selected[s][i] for s in ('visual', 'temporal', 'entropy')})}")
        # leading whitespace outside the element (tighter highlight), unless the token is only whitespace
        lead = text[: len(text) - len(text.lstrip())] if text.strip() else ""
        body = text[len(lead):]
        out.append(f'{_esc(lead)}<span class="{" ".join(classes)}" data-i="{i}" style="{";".join(style)}">'
                   f"{_esc(body)}</span>")
    return "".join(out)


def _frames_html(record: dict) -> str:
    frames = record.get("frames")
    frames = [f for f in frames if isinstance(f, dict) and f.get("image")] if isinstance(frames, list) else []
    if not frames:
        return '<p class="muted">No frames recorded.</p>'
    by_group: dict = {}
    for f in frames:
        by_group.setdefault(f.get("group", f.get("index", 0)), []).append(f)

    def figure(group, members, caption) -> str:
        imgs = "".join(
            f'<div class="frame"><img alt="frame {_esc(f.get("index"))}" src="data:{_esc(f.get("mime", "image/png"))};'
            f'base64,{_esc(f["image"])}"><span>{_fmt_time(f.get("timestamp_s"))}</span></div>' for f in members)
        return (f'<figure class="group" data-group="{_esc(group)}"><div class="row">{imgs}</div>'
                f'<figcaption>{caption}</figcaption></figure>')

    groups = record.get("groups") if isinstance(record.get("groups"), list) else []
    groups = {g["group"]: g for g in groups if isinstance(g, dict) and "group" in g}

    def span(g) -> str:
        info = groups.get(g)
        if info and _finite(info.get("start_s")) is not None and _finite(info.get("end_s")) is not None:
            return f" · {info['start_s']:.1f}–{info['end_s']:.1f} s"
        return ""

    strip = "".join(figure(g, m, f"group {g}{span(g)}") for g, m in sorted(by_group.items()))
    out = [f'<div class="strip-label">Sampled frames, by temporal group</div><div class="strip">{strip}</div>']
    perm = record.get("permutation")
    if isinstance(perm, list) and perm and all(p in by_group for p in perm):
        strategy = (record.get("settings") or {}).get("temporal_strategy", "")
        shuffled = "".join(figure(p, by_group[p], f"slot {slot} ← group {p}") for slot, p in enumerate(perm))
        out.append(f'<div class="strip-label">Temporally perturbed input ({_esc(strategy)}): the same groups in '
                   f'the order {_esc(perm)}</div><div class="strip perturbed">{shuffled}</div>')
    return "".join(out)


def _fmt_time(t) -> str:
    t = _finite(t)
    return "" if t is None else f"{t:.2f} s"


def _fmt_value(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple, dict, bool)) or v is None:
        return json.dumps(v, default=str)
    return str(v)


# top-level record fields shown elsewhere on the page (others with a short value go to the "Run details" table)
KNOWN_FIELDS = {"schema", "kind", "title", "question", "prompt", "options", "response", "answer", "answer_method",
                "tokens", "token_ids", "special", "scores", "selected", "logp", "permutation", "groups", "frames",
                "stats", "settings", "extra", "prompt_ids", "weights"}


def _details(record: dict) -> dict:
    """`extra`, or else the record's other top-level fields with a short value (a rollout's step, reward...)."""
    if isinstance(record.get("extra"), dict):
        return record["extra"]
    out = {}
    for k, v in record.items():
        if k in KNOWN_FIELDS:
            continue
        if isinstance(v, (str, int, float, bool)) or v is None or (
                isinstance(v, (list, dict)) and len(json.dumps(v, default=str)) <= 200):
            out[k] = v
    return out


def _table(title: str, data: dict | None, cls: str) -> str:
    if not data:
        return ""
    rows = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(_fmt_value(v))}</td></tr>" for k, v in data.items())
    return f'<details class="{cls}" open><summary>{_esc(title)}</summary><table>{rows}</table></details>'


def _summary_html(record: dict) -> str:
    n = len(record.get("tokens") or [])
    sel = record.get("selected") or {}
    counts = " · ".join(f'<span class="chip c{s[0]}">{LABELS[s].split(" ")[0]}: {sum(map(bool, sel.get(s) or []))}'
                        f"</span>" for s in ("visual", "temporal", "entropy") if s in sel)
    union = sum(map(bool, sel.get("union") or []))
    settings = record.get("settings") or {}
    ratio = settings.get("ratio")
    parts = [f"<b>{n}</b> tokens", f"<b>{union}</b> key tokens (union)"]
    if ratio is not None:
        parts.append(f"top {_fmt_value(float(ratio) * 100)}% per signal")
    answer = record.get("answer")
    answer_html = ""
    if "answer" in record:
        shown = _esc(answer) if answer is not None else "—"
        method = f" ({_esc(record['answer_method'])})" if record.get("answer_method") else ""
        answer_html = f'<div class="answer">Answer read from the response: <b>{shown}</b>{method}</div>'
    return f'<div class="summary">{" · ".join(parts)} &nbsp; {counts}</div>{answer_html}'


def _record_html(k: int, record: dict) -> str:
    n = len(record.get("tokens") or [])
    data = {
        "tokens": [str(t) for t in record.get("tokens") or []],
        "scores": {s: _get(record, "scores", s, n) for s in ("visual", "temporal", "entropy")},
        "selected": {s: _get(record, "selected", s, n, False) for s in SIGNAL_VIEWS},
        "logp": {s: _get(record, "logp", s, n) for s in ("full", "visual", "temporal")},
    }
    data["scores"] = {s: [_finite(v) for v in vs] for s, vs in data["scores"].items()}
    data["logp"] = {s: [_finite(v) for v in vs] for s, vs in data["logp"].items()}
    question = record.get("question") or record.get("title") or f"record {k}"
    options = record.get("options") or {}
    opts_html = ("<ol class=\"options\">" + "".join(f"<li><b>{_esc(lab)}.</b> {_esc(txt)}</li>"
                                                    for lab, txt in options.items()) + "</ol>") if options else ""
    prompt = record.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        prompt = json.dumps(prompt, indent=1, default=str)
    prompt_html = (f'<details class="prompt"><summary>Prompt sent to the model</summary><pre>{_esc(prompt)}</pre>'
                   "</details>") if prompt else ""
    extra = _details(record)
    return (f'<section class="record" data-record="{k}" data-tokens="{n}"{"" if k == 0 else " hidden"}>'
            f'<h2 class="question">{_esc(question)}</h2>{opts_html}{_summary_html(record)}'
            f'<div class="strip-label">Response</div>'
            f'<div class="response" data-record="{k}">{_tokens_html(record)}</div>'
            f'<div class="frames">{_frames_html(record)}</div>'
            f'{prompt_html}'
            f'{_table("Run details", extra, "extra")}'
            f'{_table("Settings", record.get("settings"), "settings")}'
            f'{_table("Selection statistics", record.get("stats"), "stats")}'
            f'<script type="application/json" class="tokdata">{_json_for_script(data)}</script>'
            "</section>")


def _record_label(k: int, record: dict) -> str:
    label = str(record.get("title") or record.get("question") or f"record {k}")
    label = label if len(label) <= 80 else label[:77] + "..."
    where = " ".join(f"{key} {_fmt_value(record[key])}" for key in ("step", "rank", "row", "reward")
                     if isinstance(record.get(key), (int, float)) and not isinstance(record.get(key), bool))
    return f"{k}: " + (f"[{where}] " if where else "") + label


CSS_TEMPLATE = """
:root{--vc:rgb(37,99,235);--tc:rgb(234,88,12);--ec:rgb(13,148,136)}
*{box-sizing:border-box}
body{font:15px/1.5 "DejaVu Sans",system-ui,sans-serif;margin:0;color:#1f2937;background:#fafafa}
header{position:sticky;top:0;z-index:5;background:#fff;border-bottom:1px solid #e5e7eb;padding:8px 18px;
 display:flex;flex-wrap:wrap;gap:10px 22px;align-items:center}
header h1{font-size:17px;margin:0;font-weight:600}
.controls{display:flex;gap:4px}
.controls label{border:1px solid #d1d5db;border-radius:6px;padding:3px 10px;cursor:pointer;user-select:none;
 background:#fff}
.controls input{position:absolute;opacity:0;pointer-events:none}
.controls label.on{color:#fff}
.controls label.on.lv{background:var(--vc);border-color:var(--vc)}
.controls label.on.lt{background:var(--tc);border-color:var(--tc)}
.controls label.on.le{background:var(--ec);border-color:var(--ec)}
.controls label.on.lu{background:#b45309;border-color:#b45309}
.legend{font-size:13px;color:#4b5563}
main{padding:10px 18px 40px;max-width:1200px}
h2.question{font-size:18px;margin:10px 0 4px}
.summary,.answer{font-size:14px;color:#374151;margin:2px 0}
.chip{border-radius:4px;padding:0 6px;color:#fff;font-size:12.5px}
.chip.cv{background:var(--vc)}.chip.ct{background:var(--tc)}.chip.ce{background:var(--ec)}
.strip-label{font-size:13px;color:#6b7280;margin:12px 0 4px;text-transform:uppercase;letter-spacing:.04em}
.strip{display:flex;flex-wrap:wrap;gap:8px}
figure.group{margin:0;padding:5px;border:1px solid #d1d5db;border-radius:6px;background:#fff}
figure.group .row{display:flex;gap:4px}
.strip.perturbed figure.group{border-color:var(--tc)}
figure.group figcaption{font-size:12px;color:#4b5563;text-align:center}
.frame{display:flex;flex-direction:column;align-items:center;font-size:11px;color:#6b7280}
.frame img{height:72px;width:auto;image-rendering:pixelated;border-radius:3px;background:#000}
.response{white-space:pre-wrap;word-break:break-word;font-size:17px;line-height:2.1;background:#fff;
 border:1px solid #e5e7eb;border-radius:8px;padding:10px 14px}
.tok{border-radius:3px;padding:1px 0;cursor:default}
.tok.special{font-size:13px;color:#6b7280}
body.show-visual .tok{background-color:rgba(37,99,235,calc(var(--v)*{MAX_OPACITY}))}
body.show-temporal .tok{background-color:rgba(234,88,12,calc(var(--t)*{MAX_OPACITY}))}
body.show-entropy .tok{background-color:rgba(13,148,136,calc(var(--e)*{MAX_OPACITY}))}
body.show-visual .tok.sv{box-shadow:inset 0 -3px 0 rgb(30,58,138)}
body.show-temporal .tok.st{box-shadow:inset 0 -3px 0 rgb(154,52,18)}
body.show-entropy .tok.se{box-shadow:inset 0 -3px 0 rgb(17,94,89)}
body.show-visual .tok.nv,body.show-temporal .tok.nt,body.show-entropy .tok.ne{text-decoration:underline dotted #9ca3af}
body.show-union .tok.su{background-color:rgb(253,230,138);background-image:var(--u)}
.tok:hover{outline:2px solid #111827}
details{margin-top:12px}
summary{cursor:pointer;color:#374151;font-weight:600;font-size:14px}
table{border-collapse:collapse;font-size:13px;margin-top:4px}
th,td{text-align:left;padding:2px 10px 2px 0;vertical-align:top}
th{color:#6b7280;font-weight:500}
td{font-family:"DejaVu Sans Mono",monospace;word-break:break-all}
pre{white-space:pre-wrap;background:#f3f4f6;padding:8px;border-radius:6px;font-size:13px}
.muted{color:#9ca3af}
#tip{position:fixed;display:none;z-index:10;background:#111827;color:#f9fafb;font-size:12.5px;border-radius:6px;
 padding:7px 10px;pointer-events:none;max-width:360px;box-shadow:0 4px 14px rgba(0,0,0,.25)}
#tip table{margin:4px 0 0;font-size:12.5px}#tip th{color:#d1d5db}#tip td{font-family:inherit;color:#f9fafb}
#tip .k{color:#fde68a}
"""

CSS = CSS_TEMPLATE.replace("{MAX_OPACITY}", str(MAX_OPACITY))

JS = r"""
(function(){
  var body=document.body;
  var views=["visual","temporal","entropy","union"];
  function setView(v){
    views.forEach(function(x){body.classList.toggle("show-"+x,x===v);});
    document.querySelectorAll(".controls label").forEach(function(l){
      l.classList.toggle("on",l.getAttribute("data-view")===v);});
    var r=document.querySelector('.controls input[value="'+v+'"]'); if(r) r.checked=true;
  }
  function setRecord(k){
    document.querySelectorAll("section.record").forEach(function(s){
      s.hidden=s.getAttribute("data-record")!==String(k);});
    var sel=document.getElementById("record"); if(sel) sel.value=String(k);
  }
  document.querySelectorAll('.controls input[name="signal"]').forEach(function(r){
    r.addEventListener("change",function(){ if(r.checked) setView(r.value); });
  });
  var sel=document.getElementById("record");
  if(sel) sel.addEventListener("change",function(){ setRecord(sel.value); });
  var data={};
  document.querySelectorAll("section.record").forEach(function(s){
    data[s.getAttribute("data-record")]=JSON.parse(s.querySelector("script.tokdata").textContent);
  });
  var tip=document.getElementById("tip");
  function f(x,d){ return (x===null||x===undefined)?"—":Number(x).toFixed(d===undefined?3:d); }
  function esc(s){ return String(s).replace(/[&<>"]/g,function(c){return {"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;"}[c];}); }
  function tipHtml(rec,i){
    var d=data[rec], sc=d.scores, se=d.selected, lp=d.logp;
    var rows=["visual","temporal","entropy"].map(function(s){
      return "<tr><th>"+s+"</th><td>"+f(sc[s][i])+"</td><td>"+(se[s][i]?'<span class="k">selected</span>':"")+"</td></tr>";
    }).join("");
    var lps=[["full input","full"],["visual perturbed","visual"],["temporal perturbed","temporal"]].map(function(p){
      return "<tr><th>log p, "+p[0]+"</th><td>"+f(lp[p[1]][i])+"</td><td></td></tr>";}).join("");
    return "<div>token #"+i+" <b>"+esc(JSON.stringify(d.tokens[i]))+"</b>"+(se.union[i]?' · <span class="k">key token</span>':"")+
           "</div><table>"+rows+lps+"</table>";
  }
  document.addEventListener("mouseover",function(ev){
    var t=ev.target.closest?ev.target.closest(".tok"):null;
    if(!t){ tip.style.display="none"; return; }
    var rec=t.closest("section.record").getAttribute("data-record");
    tip.innerHTML=tipHtml(rec,Number(t.getAttribute("data-i")));
    tip.style.display="block";
    var x=(ev.clientX||0)+14, y=(ev.clientY||0)+16;
    tip.style.left=Math.min(x, window.innerWidth-370)+"px"; tip.style.top=y+"px";
  });
  var params={};
  location.hash.replace(/^#/,"").split("&").forEach(function(kv){
    if(!kv) return; var p=kv.split("="); params[decodeURIComponent(p[0])]=p.length>1?decodeURIComponent(p[1]):"";
  });
  setView(views.indexOf(params.signal)>=0?params.signal:"union");
  if(params.record!==undefined && document.querySelector('section.record[data-record="'+params.record+'"]')) setRecord(params.record);
  if("selftest" in params) selftest();
  function visibleTokens(){
    var s=document.querySelector("section.record:not([hidden])");
    return s?Array.prototype.slice.call(s.querySelectorAll(".tok")):[];
  }
  function selftest(){
    var res={records:document.querySelectorAll("section.record").length, tokens:{}, views:{}, tooltip:null,
             record_switch:null, errors:[]};
    try{
      document.querySelectorAll("section.record").forEach(function(s){
        res.tokens[s.getAttribute("data-record")]=s.querySelectorAll(".tok").length;});
      views.forEach(function(v){
        var input=document.querySelector('.controls input[value="'+v+'"]');
        input.click();
        res.views[v]={body:body.className, colours:visibleTokens().map(function(t){
          var cs=getComputedStyle(t); return cs.backgroundColor+"|"+cs.backgroundImage;})};
      });
      var first=visibleTokens()[0];
      if(first){
        var r=first.getBoundingClientRect();
        first.dispatchEvent(new MouseEvent("mouseover",{bubbles:true,clientX:r.left+1,clientY:r.top+1}));
        res.tooltip={shown:getComputedStyle(tip).display!=="none", text:tip.textContent};
      }
      if(sel && sel.options.length>1){
        sel.value=sel.options[sel.options.length-1].value;
        sel.dispatchEvent(new Event("change"));
        res.record_switch={value:sel.value, visible:Array.prototype.map.call(
          document.querySelectorAll("section.record:not([hidden])"),function(s){return s.getAttribute("data-record");}),
          tokens:visibleTokens().length};
        setRecord(0);
      }
      setView("union");
    }catch(e){ res.errors.push(String(e)); }
    var out=document.createElement("pre"); out.id="selftest-result"; out.textContent=JSON.stringify(res);
    body.appendChild(out);
  }
})();
"""


def render(records: dict | Sequence[dict], title: str | None = None) -> str:
    """The HTML page (a str) for one record or several (see the module docstring)."""
    if isinstance(records, dict):
        records = [records]
    records = list(records)
    if not records:
        raise ValueError("render needs at least one record")
    title = title or ("videoktr explain" if len(records) == 1 else f"videoktr explain · {len(records)} responses")
    radios = "".join(
        f'<label class="l{v[0]}" data-view="{v}"><input type="radio" name="signal" value="{v}">{LABELS[v]}</label>'
        for v in SIGNAL_VIEWS)
    selector = ""
    if len(records) > 1:
        opts = "".join(f'<option value="{k}">{_esc(_record_label(k, r))}</option>' for k, r in enumerate(records))
        selector = f'<label>Response <select id="record">{opts}</select></label>'
    legend = ('<span class="legend">shade ∝ √(score / the response\'s highest score) · underline: selected by the '
              'signal · union: stripes show which signals selected the token · hover a token for its scores</span>')
    sections = "".join(_record_html(k, r) for k, r in enumerate(records))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{_esc(title)}</title>"
            f"<style>{CSS}</style></head><body class=\"show-union\">"
            f"<header><h1>{_esc(title)}</h1>{selector}<div class=\"controls\" role=\"radiogroup\">{radios}</div>"
            f"{legend}</header><main>{sections}</main><div id=\"tip\"></div>"
            f"<script>{JS}</script></body></html>\n")
