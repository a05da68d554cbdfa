"""The explanation page (`analysis.page`): self-contained HTML, one element per token, shading per signal; checked
in headless Chromium (the page's own #selftest operates its controls; screenshots are looked at pixel by pixel)."""

from __future__ import annotations

import math
import re
from html.parser import HTMLParser

import numpy as np
import pytest
from browser import chromium_or_skip, dump_dom, screenshot, selftest_result

from videoktr.analysis import page as P
from videoktr.analysis.explain import encode_frames
from videoktr import world as S

TOKENS = ["<think>", "first", " red", " circle", ",", " then", " blue", " square", ".", "</think>", "<answer>",
          "red", "</answer>", "<|im_end|>"]
VISUAL = [0.0, 0.01, 2.5, 1.6, 0.0, 0.02, 2.2, 1.2, 0.1, 0.0, 0.0, 0.3, 0.0, 0.0]
TEMPORAL = [0.0, 0.0, 1.9, 0.05, 0.0, 0.0, 1.4, 0.1, 0.0, 0.0, 0.0, 0.9, 0.0, 0.0]
ENTROPY = [0.05, 0.4, 0.9, 0.2, 0.1, 0.3, 0.7, 0.25, 0.1, 0.05, 0.02, 0.6, 0.01, 0.01]


def _top(scores, k=3):
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]
    return [i in order for i in range(len(scores))]


def make_record(with_frames=True, question="Which colour appeared first?") -> dict:
    layout = (("red", "circle"), ("blue", "square"), None, None)
    config = S.WorldConfig()
    frames = encode_frames(S.render_clip(layout, config))
    sel = {"visual": _top(VISUAL), "temporal": _top(TEMPORAL), "entropy": _top(ENTROPY)}
    sel["union"] = [a or b or c for a, b, c in zip(*sel.values())]
    full = [-0.01 * (i + 1) for i in range(len(TOKENS))]
    record = {
        "schema": "videoktr.explain/1", "kind": "explain", "title": question, "question": question,
        "prompt": question, "response": "".join(TOKENS[:-1]), "answer": "red", "answer_method": "answer_tag",
        "tokens": TOKENS, "token_ids": list(range(100, 100 + len(TOKENS))),
        "special": [t.startswith("<|") for t in TOKENS],
        "scores": {"visual": VISUAL, "temporal": TEMPORAL, "entropy": ENTROPY},
        "selected": sel,
        "logp": {"full": full, "visual": [f - v for f, v in zip(full, VISUAL)],
                 "temporal": [f - t for f, t in zip(full, TEMPORAL)]},
        "permutation": [1, 0, 3, 2],
        "groups": [{"group": g, "frames": [2 * g, 2 * g + 1], "start_s": g * 1.0, "end_s": g + 1.0} for g in range(4)],
        "frames": [{"index": i, "timestamp_s": i * 0.5, "group": i // 2, **f} for i, f in enumerate(frames)],
        "stats": {"update_ratio": 0.4},
        "settings": {"model": "/models/tiny", "ratio": 0.2, "temporal_strategy": "shuffle", "seed": 0},
    }
    if not with_frames:
        for key in ("frames", "groups", "logp", "permutation"):
            record.pop(key)
    return record


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tokens: list[tuple[str, dict]] = []
        self.urls: list[str] = []
        self.tags: list[str] = []
        self._in_tok = 0
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        for key in ("src", "href", "action", "data", "poster"):
            if a.get(key):
                self.urls.append(a[key])
        if tag == "span" and "tok" in (a.get("class") or "").split():
            self.tokens.append((tag, a))
            self._in_tok += 1
            self.text.append("")

    def handle_endtag(self, tag):
        if tag == "span" and self._in_tok:
            self._in_tok -= 1

    def handle_data(self, data):
        if self._in_tok:
            self.text[-1] += data


def parse(html_text: str) -> _Collect:
    c = _Collect()
    c.feed(html_text)
    return c


def test_page_is_self_contained_with_one_element_per_token():
    html_text = P.render([make_record()])
    doc = parse(html_text)
    assert len(doc.tokens) == len(TOKENS)
    # the token elements hold the tokens' text (leading spaces sit just before the element)
    assert [t for t in doc.text] == [t.lstrip() for t in TOKENS]
    assert [int(a["data-i"]) for _, a in doc.tokens] == list(range(len(TOKENS)))
    # nothing is fetched: every src is an embedded image, no stylesheet/script/font links, no http anywhere in
    # an attribute or in CSS
    assert doc.urls and all(u.startswith("data:image/") for u in doc.urls), doc.urls
    assert "link" not in doc.tags and "iframe" not in doc.tags
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html_text, re.I)
    assert "http" not in html_text.lower()
    assert "@import" not in html_text and "url(" not in html_text
    assert html_text.count("data:image/png;base64,") == 8 * 2  # the strip and the perturbed strip
    # the shading of each token per signal is sqrt(score / max)
    style = doc.tokens[2][1]["style"]
    assert "--v:1.000" in style and f"--t:{1.0:.3f}" in style
    assert f"--e:{math.sqrt(0.2 / 0.9):.3f}" in doc.tokens[3][1]["style"]
    classes = doc.tokens[2][1]["class"].split()
    assert {"sv", "st", "se", "su"} <= set(classes)
    assert "sv" not in doc.tokens[0][1]["class"].split() and "su" not in doc.tokens[0][1]["class"].split()


def test_shade_levels():
    assert P.shade_levels([0.0, 1.0, 4.0, None]) == [0.0, 0.5, 1.0, None]
    assert P.shade_levels([0.0, 0.0]) == [0.0, 0.0]
    assert P.shade_levels([None, float("nan")]) == [None, None]
    assert P.shade_levels([-2.0, 0.5]) == [1.0, 0.5]  # signed scores shade by magnitude


def test_page_tolerates_missing_parts_and_rollout_records():
    bare = {"tokens": ["a", " b", "c"], "scores": {"visual": [0.1, None, 0.3], "temporal": None},
            "selected": {"visual": [False, False, True]}}
    rollout = {**make_record(), "frames": {"videos": ["clips/x.mp4"], "fps": 2.0}, "permutation": None,
               "prompt": [{"role": "user", "content": "q"}], "step": 10, "rank": 0, "row": 3, "reward": 1.0,
               "logp": {"full": None, "visual": None, "temporal": None, "old": [0.0] * len(TOKENS)}}
    rollout.pop("title")
    html_text = P.render([make_record(with_frames=False), bare, rollout])
    doc = parse(html_text)
    assert len(doc.tokens) == len(TOKENS) + 3 + len(TOKENS)
    assert html_text.count("No frames recorded.") == 3
    assert '<select id="record">' in html_text and html_text.count("<option ") == 3
    assert "[step 10 rank 0 row 3 reward 1] " in html_text  # the rollout's label
    assert "<th>step</th><td>10</td>" in html_text  # its other fields in the run details table
    assert html_text.count('class="tok nv') == 1  # bare: the undefined visual score is marked as such
    with pytest.raises(ValueError):
        P.render([])


def test_script_data_cannot_close_the_script_element():
    record = make_record()
    record["tokens"] = list(record["tokens"])
    record["tokens"][1] = "</script><script>alert(1)</script>"
    html_text = P.render(record)
    assert html_text.count("</script>") == html_text.count("<script")  # only the page's own script elements
    assert "&lt;/script&gt;" in html_text  # shown as text in the token element


# ------------------------------------------------------------------------------------------- in a real browser


@pytest.fixture(scope="module")
def chromium():
    return chromium_or_skip()


def _alpha(colour: str) -> float:
    m = re.match(r"rgba?\(([^)]*)\)", colour)
    parts = [float(x) for x in m.group(1).split(",")]
    return parts[3] if len(parts) == 4 else 1.0


def test_browser_selftest_switches_signals_and_records(chromium, tmp_path):
    second = make_record(question="What shape was the blue one?")
    second["tokens"] = second["tokens"][:5]
    for key in ("scores", "selected", "logp"):
        second[key] = {s: v[:5] for s, v in second[key].items()}
    page = tmp_path / "page.html"
    page.write_text(P.render([make_record(), second]), encoding="utf-8")
    result = selftest_result(dump_dom(chromium, page, tmp_path / "profile", "selftest"))
    assert result["errors"] == []
    assert result["records"] == 2 and result["tokens"] == {"0": len(TOKENS), "1": 5}
    views = result["views"]
    assert set(views) == {"visual", "temporal", "entropy", "union"}
    for name, view in views.items():
        assert view["body"] == f"show-{name}"
        assert len(view["colours"]) == len(TOKENS)
    # each switch changed the shading, and each signal's shading follows that signal's scores
    signatures = {name: tuple(v["colours"]) for name, v in views.items()}
    assert len(set(signatures.values())) == 4
    for name, scores in (("visual", VISUAL), ("temporal", TEMPORAL), ("entropy", ENTROPY)):
        alphas = [_alpha(c.split("|")[0]) for c in views[name]["colours"]]
        expected = [P.MAX_OPACITY * lv for lv in P.shade_levels(scores)]
        assert alphas == pytest.approx(expected, abs=0.01), name
    rgb = {"visual": "37, 99, 235", "temporal": "234, 88, 12", "entropy": "13, 148, 136"}
    for name in rgb:
        assert all(rgb[name] in c for c in views[name]["colours"])
    # union: key tokens filled, with one stripe per selecting signal; the others plain
    union = make_record()["selected"]["union"]
    for colour, key in zip(views["union"]["colours"], union):
        assert ("linear-gradient" in colour) == key
    assert views["union"]["colours"][2].count("rgb(") >= 4  # fill + three stripes: all signals chose " red"
    # hovering a token shows its three scores and log-probabilities
    tip = result["tooltip"]
    assert tip["shown"] and "visual" in tip["text"] and "entropy" in tip["text"]
    assert "log p, full input" in tip["text"] and "-0.010" in tip["text"]
    # the record selector shows the other record
    assert result["record_switch"] == {"value": "1", "visible": ["1"], "tokens": 5}


def test_browser_screenshot_is_not_blank_and_follows_the_signal(chromium, tmp_path):
    from PIL import Image

    page = tmp_path / "page.html"
    page.write_text(P.render(make_record()), encoding="utf-8")
    shots = {}
    for view in ("visual", "temporal"):
        path = screenshot(chromium, page, tmp_path / f"{view}.png", tmp_path / "profile", f"signal={view}")
        shots[view] = np.asarray(Image.open(path).convert("RGB"))
    for view, img in shots.items():
        assert img.shape[0] >= 600 and img.shape[1] >= 1000
        colours = np.unique(img.reshape(-1, 3), axis=0)
        assert len(colours) > 50, f"{view}: a nearly blank screenshot ({len(colours)} colours)"
        background = np.all(img >= 245, axis=-1) | np.all(np.abs(img.astype(int) - 250) <= 3, axis=-1)
        assert background.mean() < 0.97, f"{view}: the screenshot is almost all background"

        def count(rgb, tol=6):
            return int(np.all(np.abs(img.astype(int) - np.asarray(rgb)) <= tol, axis=-1).sum())

        def has(rgb, tol=6):
            return count(rgb, tol) > 0

        assert has((220, 40, 40)) and has((40, 90, 230)), f"{view}: the clip's frames are not shown"
        # the top token of the shown signal: its colour at opacity MAX_OPACITY over the white response box fills a
        # token-sized area; the other signal's top shade does not (a few anti-aliased edge pixels at most)
        shade = {v: tuple(round(P.MAX_OPACITY * c + (1 - P.MAX_OPACITY) * 255) for c in rgb)
                 for v, rgb in (("visual", (37, 99, 235)), ("temporal", (234, 88, 12)))}
        other = "temporal" if view == "visual" else "visual"
        assert count(shade[view], tol=3) > 150, f"{view}: no token shaded at full strength in the signal's colour"
        assert count(shade[other], tol=3) < 60, f"{view}: a token is shaded in the {other} colour"
    # the response is shaded differently under the two signals
    assert np.abs(shots["visual"].astype(int) - shots["temporal"].astype(int)).sum(-1).astype(bool).mean() > 0.001
