"""report.html as a page: nothing fetched from the network, figures with alt texts and
captions, a table of contents whose links resolve, final timings, a link notebook 06 can
show in JupyterLab."""
from __future__ import annotations

import base64
import json
import re

import pytest
from bs4 import BeautifulSoup

from dasd_lib.report_html import figure_caption, report_link, stale_report_inputs, write_report
from test_report import results_frame

# a scheme followed by //, or a bare //host: anything a browser fetches from elsewhere
EXTERNAL = re.compile(r"^\s*(?:[a-z][a-z0-9+.-]*:)?//", re.I)
CSS_URL = re.compile(r"""(?:url\(\s*['"]?|@import\s+['"])([^'")\s]+)""", re.I)
CSS_COMMENT = re.compile(r"/\*.*?\*/", re.S)


def external_references(html: str) -> list[str]:
    """Every reference of the page that would make the browser ask another host (or the
    file system) for something: src/href/srcset attributes, <link>, <script src>, CSS
    url()/@import, and URLs a script would load."""
    soup = BeautifulSoup(html, features="html.parser")
    found = []
    for tag in soup.find_all(True):
        for attr in ("src", "href", "srcset", "data", "poster", "action"):
            value = tag.get(attr)
            if value and EXTERNAL.match(value):
                found.append(f"<{tag.name} {attr}={value}>")
        css = tag.get("style") or (tag.string or "" if tag.name == "style" else "")
        for url in CSS_URL.findall(CSS_COMMENT.sub("", css)):
            if not url.startswith(("data:", "#")):
                found.append(f"<{tag.name}> css {url}")
    for script in soup.find_all("script"):
        found += [f"<script> {u}" for u in re.findall(r"(?:https?:)?//[\w.-]+\.\w+/\S*",
                                                       script.get_text())]
    return found


def test_the_url_finder_finds_what_a_browser_would_fetch():
    page = ('<html><head><script src="https://cdn.example.org/require.js"></script>'
            '<link rel="stylesheet" href="//fonts.example.org/a.css">'
            '<style>/* see https://example.org */ body { background: url("http://x.org/b.png") }'
            '</style><script>import("https://cdn.example.org/mermaid.mjs")</script></head>'
            '<body><a href="#Results">in page</a><img src="data:image/png;base64,AAAA"></body>'
            '</html>')
    assert external_references(page) == [
        "<script src=https://cdn.example.org/require.js>",
        "<link href=//fonts.example.org/a.css>",
        "<style> css http://x.org/b.png",
        "<script> https://cdn.example.org/mermaid.mjs\")"]


@pytest.fixture
def run_dir(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = tmp_path / "r1"
    (run / "figures").mkdir(parents=True)
    results_frame({("static", "de", 0): 401.0, ("dasd", "de", 0): 433.5}).to_csv(
        run / "results.csv", index=False)
    for name in ("04_sumr_by_method", "05_umap_dasd_de"):
        fig, ax = plt.subplots(figsize=(2, 2))
        ax.plot([0, 1], [1, 0])
        fig.savefig(run / "figures" / f"{name}.png")
        plt.close(fig)
    return run


def timings(status: str, report_entry: dict) -> str:
    return json.dumps({"run_id": "r1", "status": status, "started": "2026-12-03T08:00:00+00:00",
                       "finished": None if status == "running" else "2026-12-03T08:02:30+00:00",
                       "notebooks": {"00_prepare_data.ipynb": {"status": "ok", "seconds": 17.64},
                                     "06_report.ipynb": report_entry},
                       **({} if status == "running" else {"total_seconds": 150.0})})


def timings_table(soup: BeautifulSoup) -> list[list[str]]:
    table = soup.find(id="Timings").find_next("table")
    return [[td.get_text(strip=True) for td in tr.find_all("td")] for tr in table.find_all("tr")
            if tr.find("td")]


def test_report_page_is_self_contained_with_captions_and_contents(run_dir):
    (run_dir / "timings.json").write_text(timings("running", {"status": "running",
                                                                "seconds": None}))
    html = write_report(run_dir).read_text(encoding="utf-8")
    soup = BeautifulSoup(html, features="html.parser")
    assert external_references(html) == []
    assert "require.js" not in html and "MathJax" not in html and "mermaid" not in html

    # every figure embedded, with an alt text and a caption saying what it shows
    images = soup.find_all("img")
    assert len(images) == 2
    for img, stem in zip(images, ["04_sumr_by_method", "05_umap_dasd_de"]):
        png = base64.b64encode((run_dir / "figures" / f"{stem}.png").read_bytes()).decode()
        assert img["src"] == f"data:image/png;base64,{png}"
        assert img["alt"] == figure_caption(stem)
        assert figure_caption(stem) in img.find_parent("figure").figcaption.get_text()
    assert figure_caption("05_umap_dasd_de").startswith("UMAP of the dasd features")
    assert " de test captions only" in figure_caption("05_umap_dasd_de")
    assert "No description has been provided" not in html

    # the contents: a link per section, in page order, each to a heading that exists
    nav = soup.find("nav", id="contents")
    links = nav.find_all("a")
    top = [li.find("a").get_text() for li in nav.find("ul").find_all("li", recursive=False)]
    assert top == ["Results", "Disentanglement probes", "Figures", "Parameters", "Environment",
                   "Timings"]
    assert "finetune" in [a.get_text() for a in links]  # the results table's h3, nested
    for a in links:
        assert soup.find(id=a["href"][1:]) is not None, a

    # written while notebook 06 ran: the report says so, the finished notebooks' seconds stand
    timing_text = soup.find(id="Timings").find_next("p").get_text()
    assert "Run status: running" in timing_text and "still going" in timing_text
    assert timings_table(soup) == [["00_prepare_data.ipynb", "ok", "17.6"],
                                   ["06_report.ipynb", "running", "–"]]


def test_report_of_a_finished_run_shows_final_timings(run_dir):
    (run_dir / "timings.json").write_text(timings("completed", {"status": "ok",
                                                                  "seconds": 3.21}))
    soup = BeautifulSoup(write_report(run_dir).read_text(encoding="utf-8"), "html.parser")
    timing_text = soup.find(id="Timings").find_next("p").get_text()
    assert timing_text == ("Run status: completed; the last dasd-run started "
                           "2026-12-03T08:00:00+00:00, finished 2026-12-03T08:02:30+00:00 "
                           "(150.0 s). Below, each notebook's latest execution.")
    assert timings_table(soup) == [["00_prepare_data.ipynb", "ok", "17.6"],
                                   ["06_report.ipynb", "ok", "3.2"]]


def test_stale_inputs_are_those_written_after_the_report(run_dir):
    import os
    assert stale_report_inputs(run_dir) == []  # no report yet: nothing to refresh
    report = write_report(run_dir)
    assert stale_report_inputs(run_dir) == []
    figure = run_dir / "figures" / "05_umap_dasd_de.png"
    later = report.stat().st_mtime_ns + 1_000_000
    os.utime(figure, ns=(later, later))
    (run_dir / "notes.txt").write_text("not something the report shows")
    assert stale_report_inputs(run_dir) == [figure]


def test_report_link_is_relative_to_the_notebook(tmp_path):
    run = tmp_path / "reports" / "my run"
    run.mkdir(parents=True)
    template = {"JPY_SESSION_NAME": str(tmp_path / "notebooks" / "06_report.ipynb")}
    (tmp_path / "notebooks").mkdir()
    assert report_link(run, template) == "../reports/my%20run/report.html"
    executed = {"JPY_SESSION_NAME": str(run / "notebooks" / "06_report.ipynb")}
    assert report_link(run, executed) == "../report.html"
    assert report_link(run, {}) == "../report.html"  # dasd-run's copy in run/notebooks/
    assert "file:" not in report_link(run, template)
