#!/usr/bin/env python3
"""Build a held-out evaluation set of real, human-written questions (public FAQs from Debian
documentation packages) with their answer passages, plus distractor passages from the same kind of
documentation, in embedfleet's dataset layout.  Python 3.11, standard library only.

See README.md next to this file for the sources, how the text is cut, and how to run it.
"""
from __future__ import annotations

import argparse
import glob
import gzip
import hashlib
import html
import json
import os
import random
import re
import shutil
import subprocess
import sys
import unicodedata
from html.parser import HTMLParser

# Debian packages the text comes from.  Deliberately NOT the Python, Perl or Debian FAQs (kept aside
# for an independent check).
PACKAGES = ["git-doc", "libcurl4-doc", "sqlite3-doc"]

MAX_CHARS = 1000        # a passage is at most this long
MIN_DISTRACTOR = 120    # distractor passages shorter than this are dropped (headers, "SEE ALSO" lists)
MIN_LETTER_RATIO = 0.55  # letters among non-space characters; below this a passage is mostly markup/code

# How many distractor passages to keep per source at most (whole pages are kept or dropped, picked in a
# stable order by a hash of the page name, so the set only changes when the package changes).
DISTRACTOR_CAPS = {"git-manual": 10_000, "git-man": 900, "curl-docs": 450, "sqlite-docs": 650}

DOC = "usr/share/doc"


class BuildError(Exception):
    pass


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# Fetching
# ----------------------------------------------------------------------------------------------

def fetch(cache: str, offline: bool) -> str:
    debs = os.path.join(cache, "debs")
    root = os.path.join(cache, "root")
    os.makedirs(debs, exist_ok=True)
    os.makedirs(root, exist_ok=True)
    if not shutil.which("dpkg"):
        raise BuildError("dpkg not found: this needs a Debian-like system (dpkg -x extracts the packages)")
    updated = False
    for pkg in PACKAGES:
        if glob.glob(os.path.join(debs, f"{glob.escape(pkg)}_*.deb")):
            continue
        if offline:
            raise BuildError(f"--offline: no {pkg}_*.deb in {debs}")
        if not shutil.which("apt-get"):
            raise BuildError("apt-get not found: put the .deb files in %s by hand (%s)" % (debs, ", ".join(PACKAGES)))
        log(f"apt-get download {pkg}")
        r = subprocess.run(["apt-get", "download", pkg], cwd=debs, capture_output=True, text=True)
        if r.returncode != 0 and not updated:
            log("  failed; running apt-get update -qq and trying again")
            u = subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True)
            updated = True
            if u.returncode != 0:
                log("  apt-get update failed: " + (u.stderr.strip() or u.stdout.strip())[-800:])
            r = subprocess.run(["apt-get", "download", pkg], cwd=debs, capture_output=True, text=True)
        if r.returncode != 0 or not glob.glob(os.path.join(debs, f"{glob.escape(pkg)}_*.deb")):
            raise BuildError(
                f"apt-get download {pkg} failed (exit {r.returncode}); is the Debian mirror reachable?\n"
                + (r.stderr.strip() or r.stdout.strip())[-1500:])
    for pkg in PACKAGES:
        for deb in sorted(glob.glob(os.path.join(debs, f"{glob.escape(pkg)}_*.deb"))):
            mark = os.path.join(root, "." + os.path.basename(deb) + ".done")
            if os.path.exists(mark):
                continue
            log(f"dpkg -x {os.path.basename(deb)}")
            r = subprocess.run(["dpkg", "-x", deb, root], capture_output=True, text=True)
            if r.returncode != 0:
                raise BuildError(f"dpkg -x {deb} failed: {r.stderr.strip()[-800:]} (a broken download? delete it and rerun)")
            open(mark, "w").close()
    return root


# ----------------------------------------------------------------------------------------------
# Text helpers
# ----------------------------------------------------------------------------------------------

_CTRL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b\ufeff]")


def clean(s: str) -> str:
    """Decoded, NFC, no control characters, no-break spaces as spaces; keeps newlines."""
    s = html.unescape(s)
    s = unicodedata.normalize("NFC", s)
    s = s.replace("\u00a0", " ").replace("\r\n", "\n").replace("\r", "\n").replace("\t", "    ")
    return _CTRL.sub("", s)


def flat(s: str) -> str:
    return re.sub(r"\s+", " ", clean(s)).strip()


def norm_key(s: str) -> str:
    """For substring tests: lower case, letters and digits only, single spaces."""
    return " ".join(re.findall(r"[a-z0-9]+", s.lower()))


def slug(s: str, maxlen: int = 48) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", flat(s).lower()).strip("-")
    return (s[:maxlen].rstrip("-")) or "x"


def letter_ratio(s: str) -> float:
    chars = [c for c in s if not c.isspace()]
    if not chars:
        return 0.0
    return sum(c.isalpha() for c in chars) / len(chars)


_SENT = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[A-Z0-9\"'(`])")


def _split_long(par: str, limit: int) -> list[str]:
    """A paragraph longer than limit: cut at sentence ends, then line ends, then spaces."""
    if len(par) <= limit:
        return [par]
    for splitter in (lambda t: _SENT.split(t), lambda t: t.split("\n"), lambda t: t.split(" ")):
        pieces = [p for p in splitter(par) if p.strip()]
        if len(pieces) > 1:
            sep = "\n" if "\n" in par and splitter(par) == par.split("\n") else " "
            out, cur = [], ""
            for p in pieces:
                for q in _split_long(p.strip(), limit) if len(p) > limit else [p.strip()]:
                    if cur and len(cur) + 1 + len(q) > limit:
                        out.append(cur)
                        cur = q
                    else:
                        cur = f"{cur}{sep}{q}" if cur else q
            if cur:
                out.append(cur)
            return out
    return [par[i:i + limit] for i in range(0, len(par), limit)]


def pack(paragraphs: list[str], limit: int = MAX_CHARS) -> list[str]:
    """Greedy packing of whole paragraphs into passages of at most limit characters."""
    pieces: list[str] = []
    for p in paragraphs:
        p = p.strip("\n")
        if p.strip():
            pieces.extend(_split_long(p, limit))
    out, cur = [], ""
    for p in pieces:
        if cur and len(cur) + 2 + len(p) > limit:
            out.append(cur)
            cur = p
        else:
            cur = f"{cur}\n\n{p}" if cur else p
    if cur:
        out.append(cur)
    return out


# ----------------------------------------------------------------------------------------------
# HTML to sections of paragraphs
# ----------------------------------------------------------------------------------------------

BLOCK = {"p", "div", "li", "ul", "ol", "dl", "dt", "dd", "blockquote", "table", "tr", "br", "hr",
         "section", "article", "center", "form", "tbody", "thead", "caption", "figure", "figcaption"}
HEAD = {"h1", "h2", "h3", "h4", "h5", "h6"}
VOID = {"br", "hr", "img", "meta", "link", "input", "area", "base", "col", "wbr", "source"}


class Sections(HTMLParser):
    """Collects (heading, [paragraph]) sections.  Headings start a new section and are kept apart from
    the text.  <pre> keeps its line breaks; elsewhere white space is collapsed."""

    def __init__(self, skip_classes=(), skip_ids=()):
        super().__init__(convert_charrefs=True)
        self.skip_classes = set(skip_classes)
        self.skip_ids = set(skip_ids)
        self.skip_tag = None
        self.skip_depth = 0
        self.hidden = 0           # inside script/style/head/title
        self.pre = 0
        self.in_head = None
        self.head_buf: list[str] = []
        self.buf: list[str] = []
        self.sections: list[tuple[str, list[str]]] = [("", [])]

    def _flush(self):
        text = "".join(self.buf)
        self.buf = []
        if self.pre:
            text = text.strip("\n")
            if text.strip():
                self.sections[-1][1].append(clean(text).rstrip())
        else:
            t = flat(text)
            if t:
                self.sections[-1][1].append(t)

    def handle_starttag(self, tag, attrs):
        if self.skip_tag:
            if tag == self.skip_tag:
                self.skip_depth += 1
            return
        a = dict(attrs)
        classes = set((a.get("class") or "").split())
        if tag not in VOID and ((classes & self.skip_classes) or (a.get("id") in self.skip_ids)):
            self.skip_tag, self.skip_depth = tag, 1
            return
        if tag in ("script", "style", "head", "title", "noscript", "svg"):
            self.hidden += 1
            return
        if tag in HEAD:
            self._flush()
            self.in_head = tag
            self.head_buf = []
            return
        if tag == "pre":
            self._flush()
            self.pre += 1
            return
        if tag in BLOCK:
            if self.pre:
                self.buf.append("\n")
            else:
                self._flush()
        elif tag in ("td", "th"):
            self.buf.append(" ")

    def handle_startendtag(self, tag, attrs):
        if tag in ("br", "hr"):
            self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag):
        if self.skip_tag:
            if tag == self.skip_tag:
                self.skip_depth -= 1
                if self.skip_depth == 0:
                    self.skip_tag = None
            return
        if tag in ("script", "style", "head", "title", "noscript", "svg"):
            self.hidden = max(0, self.hidden - 1)
            return
        if self.in_head and tag == self.in_head:
            self.sections.append((flat("".join(self.head_buf)), []))
            self.in_head = None
            return
        if tag == "pre":
            self._flush()
            self.pre = max(0, self.pre - 1)
            return
        if tag in BLOCK and not self.pre:
            self._flush()

    def handle_data(self, data):
        if self.skip_tag or self.hidden:
            return
        if self.in_head:
            self.head_buf.append(data)
        else:
            self.buf.append(data)

    def close(self):
        super().close()
        self._flush()
        return [(h, ps) for h, ps in self.sections if ps]


def html_sections(text: str, **kw) -> list[tuple[str, list[str]]]:
    p = Sections(**kw)
    p.feed(text)
    return p.close()


def read_text(path: str) -> str:
    raw = gzip.open(path, "rb").read() if path.endswith(".gz") else open(path, "rb").read()
    return raw.decode("utf-8", errors="replace")


# ----------------------------------------------------------------------------------------------
# FAQ parsers: each returns a list of dict(id, source, question, paragraphs)
# ----------------------------------------------------------------------------------------------

def asciidoc_inline(s: str) -> str:
    s = re.sub(r"linkgit:([\w.-]+)\[(\d+)\]", r"\1(\2)", s)
    s = re.sub(r"link:[^\[\s]+\[([^\]]*)\]", r"\1", s)
    s = re.sub(r"<<[^,>]+,([^>]+)>>", r"\1", s)
    s = re.sub(r"<<([^>]+)>>", r"\1", s)
    s = re.sub(r"`([^`]+)`", r"\1", s)
    s = re.sub(r"(?<![\w*])\*([^*\n]+)\*(?![\w*])", r"\1", s)
    s = re.sub(r"(?<![\w'])'([^'\n]+)'(?![\w'])", r"\1", s)
    s = re.sub(r"(?<![\w_])_([^_\n]+)_(?![\w_])", r"\1", s)
    return s


def parse_gitfaq(root: str) -> list[dict]:
    path = os.path.join(root, DOC, "git-doc", "gitfaq.txt")
    lines = read_text(path).split("\n")
    entries, cur, i = [], None, 0
    in_lit = False
    par: list[str] = []

    def end_par():
        nonlocal par
        if cur is not None and par:
            if in_lit:
                cur["paragraphs"].append(clean("\n".join(par)))
            else:
                cur["paragraphs"].append(flat(asciidoc_inline(" ".join(x.strip() for x in par))))
        par = []

    while i < len(lines):
        ln = lines[i]
        if in_lit:
            if re.fullmatch(r"-{4,}", ln.strip()):
                end_par()
                in_lit = False
            else:
                par.append(ln.replace("\t", "    "))
            i += 1
            continue
        m = re.fullmatch(r"\[\[([\w-]+)\]\]", ln.strip())
        if m and i + 1 < len(lines) and lines[i + 1].rstrip().endswith("::"):
            end_par()
            cur = {"id": f"gitfaq/{m.group(1)}", "source": "gitfaq",
                   "question": flat(asciidoc_inline(lines[i + 1].rstrip()[:-2])), "paragraphs": []}
            entries.append(cur)
            i += 2
            continue
        # a section title (underlined) ends the current entry
        if i + 1 < len(lines) and ln.strip() and re.fullmatch(r"-{3,}", lines[i + 1].strip()) \
                and abs(len(lines[i + 1].strip()) - len(ln.strip())) <= 2:
            end_par()
            cur = None
            i += 2
            continue
        if re.fullmatch(r"-{4,}", ln.strip()):
            end_par()
            in_lit = True
        elif ln.strip() in ("", "+"):
            end_par()
        elif cur is not None:
            par.append(ln)
        i += 1
    end_par()
    return [e for e in entries if e["paragraphs"]]


def parse_curl_faq(root: str) -> list[dict]:
    cands = glob.glob(os.path.join(root, DOC, "libcurl4*", "FAQ*")) + glob.glob(os.path.join(root, DOC, "curl", "FAQ*"))
    if not cands:
        raise BuildError("curl FAQ not found under usr/share/doc/libcurl4*/")
    text = clean(read_text(sorted(cands)[0]))
    toc_part, sep, body = text.partition("\n" + "=" * 78)
    if not sep:
        raise BuildError("curl FAQ: no ===== line between the table of contents and the body")
    toc = re.findall(r"^ {2}(\d+\.\d+) (.+)$", toc_part, re.M)       # N.M entries; N.M.K are sub-items
    titles = {num: t.strip() for num, t in toc}
    entries, cur, par = [], None, []

    def end_par():
        nonlocal par
        if cur is not None and par:
            body_lines = [x[2:] if x.startswith("  ") else x.lstrip() for x in par]
            if any(x.startswith(" ") for x in body_lines):       # code, lists: keep the lines
                cur["paragraphs"].append("\n".join(x.rstrip() for x in body_lines))
            else:
                cur["paragraphs"].append(flat(" ".join(body_lines)))
        par = []

    seen, prev = set(), ""
    for ln in body.split("\n"):
        m = re.fullmatch(r" {1,2}(\d+\.\d+) (.+)", ln.rstrip())
        # a heading: a number of the table of contents, seen once, after a blank line (a wrapped
        # line such as "  4.12 and the SSLCERTS document" follows a non-blank one).  The question is
        # taken from the table of contents, where a few are worded more carefully than in the body.
        is_head = m and m.group(1) in titles and m.group(1) not in seen and not prev.strip()
        prev = ln
        if is_head:
            seen.add(m.group(1))
            end_par()
            cur = {"id": f"curl-faq/{m.group(1)}", "source": "curl-faq",
                   "question": flat(titles[m.group(1)]), "paragraphs": []}
            entries.append(cur)
            continue
        if re.fullmatch(r" ?\d+\. .+", ln.rstrip()) and not ln.startswith("  "):   # chapter title
            end_par()
            cur = None
            continue
        m = re.fullmatch(r" {3}(\d+\.\d+\.\d+) (.+)", ln.rstrip())              # 4.5.1 "400 Bad Request"
        if m:
            end_par()
            if cur is not None:
                cur["paragraphs"].append(flat(m.group(2)))
            continue
        if not ln.strip():
            end_par()
        elif cur is not None:
            par.append(ln.rstrip())
    end_par()
    missing = sorted(set(titles) - {e["id"].split("/")[1] for e in entries})
    if missing:
        log(f"curl FAQ: {len(missing)} questions of the table of contents not found in the body: {missing}")
    return [e for e in entries if e["paragraphs"]]


def parse_sqlite_faq(root: str) -> list[dict]:
    path = os.path.join(root, DOC, "sqlite3", "faq.html")
    text = read_text(path)
    parts = re.split(r'<a name="q(\d+)"></a>', text)
    entries = []
    for k in range(1, len(parts) - 1, 2):
        num, seg = parts[k], parts[k + 1]
        if k + 2 >= len(parts):
            seg = seg.split("</ol>")[0]
        m = re.search(r"<b>(.*?)</b>", seg, re.S)
        if not m:
            log(f"sqlite FAQ q{num}: no <b> question, skipped")
            continue
        q = flat(re.sub(r"<[^>]+>", "", m.group(1)))
        q = re.sub(r"^\(\d+\)\s*", "", q)
        secs = html_sections(seg[m.end():])
        paras = [p for _, ps in secs for p in ps]
        entries.append({"id": f"sqlite-faq/q{num}", "source": "sqlite-faq", "question": q, "paragraphs": paras})
    return [e for e in entries if e["paragraphs"]]


# ----------------------------------------------------------------------------------------------
# Distractor sources: each returns a list of dict(page, source, sections=[(heading, [paragraph])])
# ----------------------------------------------------------------------------------------------

_FOOTER = re.compile(r"^(Last updated \d{4}-|This page last modified on|Part of the git\(1\) suite$)")


def _drop_footer(sections):
    return [(h, [p for p in ps if not _FOOTER.match(p)]) for h, ps in sections]


def each_file(paths, what, fn) -> list[dict]:
    """fn(path) for every path; a file that cannot be read or parsed is reported and skipped."""
    out = []
    for path in paths:
        try:
            got = fn(path)
        except Exception as e:           # noqa: BLE001 - odd input must not stop the build
            log(f"skipped {what} file {path}: {type(e).__name__}: {e}")
            continue
        if got:
            out.append(got)
    return out


def git_manual(root: str) -> list[dict]:
    path = os.path.join(root, DOC, "git-doc", "user-manual.html")
    secs = html_sections(read_text(path), skip_classes={"toc", "navheader", "navfooter"})
    return [{"page": "user-manual", "source": "git-manual", "sections": _drop_footer(secs)}]


def git_man(root: str) -> list[dict]:
    def one(path):
        name = os.path.basename(path)[:-5]
        if name in ("gitfaq", "user-manual"):
            return None
        secs = html_sections(read_text(path), skip_ids={"footer", "toc"})
        return {"page": name, "source": "git-man", "sections": _drop_footer(secs)}
    return each_file(sorted(glob.glob(os.path.join(root, DOC, "git-doc", "git*.html"))), "git man page", one)


def md_sections(text: str) -> list[tuple[str, list[str]]]:
    text = clean(text)
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    sections: list[tuple[str, list[str]]] = [("", [])]
    par: list[str] = []
    fence = False

    def end_par(lit=False):
        nonlocal par
        if par:
            if lit or any(x.startswith("    ") for x in par):
                sections[-1][1].append("\n".join(x.rstrip() for x in par))
            else:
                t = " ".join(x.strip() for x in par)
                t = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", t)
                t = re.sub(r"`([^`]+)`", r"\1", t)
                t = re.sub(r"\*\*([^*]+)\*\*", r"\1", t)
                t = re.sub(r"(?<!\w)[*_]([^*_]+)[*_](?!\w)", r"\1", t)
                t = re.sub(r"<[^>]+>", "", t)
                t = flat(t)
                if t:
                    sections[-1][1].append(t)
        par = []

    lines = text.split("\n")
    for i, ln in enumerate(lines):
        if ln.strip().startswith("```"):
            end_par(lit=fence)
            fence = not fence
            continue
        if fence:
            par.append(ln)
            continue
        m = re.match(r"#{1,6}\s+(.*)", ln)
        if m:
            end_par()
            sections.append((flat(m.group(1).strip("# ")), []))
            continue
        if i + 1 < len(lines) and ln.strip() and re.fullmatch(r"[=-]{3,}", lines[i + 1].strip()):
            end_par()
            sections.append((flat(ln), []))
            continue
        if re.fullmatch(r"[=-]{3,}", ln.strip()):
            continue
        if not ln.strip():
            end_par()
        elif re.match(r"\s*([-*+]|\d+\.)\s", ln) and par and not par[-1].startswith("    "):
            end_par()               # a list item starts its own paragraph
            par.append(ln)
        else:
            par.append(ln)
    end_par(lit=fence)
    return [(h, ps) for h, ps in sections if ps]


def curl_docs(root: str) -> list[dict]:
    def one(path):
        name = re.sub(r"\.md(\.gz)?$", "", os.path.basename(path))
        if name.upper().startswith("FAQ"):
            return None
        return {"page": name, "source": "curl-docs", "sections": md_sections(read_text(path))}
    paths = sorted(glob.glob(os.path.join(root, DOC, "libcurl4*", "*.md")) +
                   glob.glob(os.path.join(root, DOC, "libcurl4*", "*.md.gz")))
    return each_file(paths, "curl doc", one)


SQLITE_SKIP = {"faq", "changes", "chronology", "index", "docs", "sitemap", "keyword_index", "toc",
               "doclist", "news", "copyright-release", "mostdeployed", "famous", "books", "support"}


def sqlite_docs(root: str) -> list[dict]:
    def one(path):
        name = os.path.basename(path)[:-5]
        if name in SQLITE_SKIP or re.match(r"\d+to\d+$", name):
            return None
        secs = html_sections(read_text(path), skip_classes={"nosearch", "menu", "fancy_toc", "fancy-toc1",
                                                            "fancy-toc2", "fancy-toc3", "searchmenu", "tagline"})
        return {"page": name, "source": "sqlite-docs", "sections": _drop_footer(secs)}
    return each_file(sorted(glob.glob(os.path.join(root, DOC, "sqlite3", "*.html"))), "sqlite doc", one)


# ----------------------------------------------------------------------------------------------
# Build
# ----------------------------------------------------------------------------------------------

def shingles(s: str, n: int = 8) -> set[str]:
    w = norm_key(s).split()
    return {" ".join(w[i:i + n]) for i in range(max(0, len(w) - n + 1))}


def build(root: str, out: str, seed: int, show: int) -> int:
    failures: list[str] = []
    faqs: list[dict] = []
    for name, fn in (("gitfaq", parse_gitfaq), ("curl-faq", parse_curl_faq), ("sqlite-faq", parse_sqlite_faq)):
        try:
            got = fn(root)
            if not got:
                raise BuildError("no questions parsed")
            faqs.extend(got)
        except Exception as e:           # noqa: BLE001 - say which source failed, keep the others
            failures.append(f"{name}: {type(e).__name__}: {e}")
            log(f"FAILED {name}: {e}")
    if not any(f["source"] == "gitfaq" for f in faqs):
        raise BuildError("gitfaq could not be read; it is required (package git-doc)")

    queries, corpus, relevant, answer_docs = {}, {}, {}, {}
    qkeys = {}
    by_text: dict[str, str] = {}
    leaks_fixed = shared = 0
    for f in faqs:
        qid, q = f["id"], f["question"]
        if not q or qid in queries:
            log(f"skipped FAQ entry {qid!r}: empty or duplicate")
            continue
        qk = norm_key(q)
        paras = []
        for p in f["paragraphs"]:
            # never leave the question's own text in its answer
            if qk and qk in norm_key(p):
                leaks_fixed += 1
                continue
            paras.append(p)
        passages = pack(paras)
        if not passages:
            log(f"skipped FAQ entry {qid}: empty answer")
            continue
        queries[qid] = q
        qkeys[qid] = qk
        relevant[qid] = []
        for i, t in enumerate(passages):
            same = by_text.get(t)
            if same:
                # two FAQ entries with the very same answer (curl 6.2 and 6.3): one passage,
                # relevant to both, so neither question is scored wrong for finding the other's copy
                relevant[qid].append(same)
                shared += 1
                continue
            cid = f"{qid}#{i}"
            corpus[cid] = t
            by_text[t] = cid
            relevant[qid].append(cid)
        answer_docs[qid] = paras

    answer_sh = set()
    for cid in corpus:
        answer_sh |= shingles(corpus[cid])

    pages: list[dict] = []
    for name, fn in (("git-manual", git_manual), ("git-man", git_man), ("curl-docs", curl_docs),
                     ("sqlite-docs", sqlite_docs)):
        try:
            got = fn(root)
            if not got:
                raise BuildError("no pages found")
            pages.extend(got)
        except Exception as e:           # noqa: BLE001
            failures.append(f"{name}: {type(e).__name__}: {e}")
            log(f"FAILED {name}: {e}")

    dropped = {"short": 0, "markup": 0, "question text": 0, "copy of an answer": 0, "over cap": 0}
    per_source: dict[str, list[tuple[str, list[tuple[str, str]]]]] = {}
    all_q = list(qkeys.values())
    for pg in pages:
        kept: list[tuple[str, str]] = []
        used_slugs: dict[str, int] = {}
        for heading, paras in pg["sections"]:
            s = slug(heading) if heading else "top"
            used_slugs[s] = used_slugs.get(s, 0) + 1
            if used_slugs[s] > 1:
                s = f"{s}-{used_slugs[s]}"
            for i, t in enumerate(pack(paras)):
                if len(t) < MIN_DISTRACTOR:
                    dropped["short"] += 1
                    continue
                if letter_ratio(t) < MIN_LETTER_RATIO:
                    dropped["markup"] += 1
                    continue
                tk = norm_key(t)
                if any(qk and len(qk) > 12 and qk in tk for qk in all_q):
                    dropped["question text"] += 1
                    log(f"dropped distractor {pg['page']}/{s}#{i}: holds a question's text")
                    continue
                sh = shingles(t)
                if sh and len(sh & answer_sh) / len(sh) > 0.3:
                    dropped["copy of an answer"] += 1
                    log(f"dropped distractor {pg['page']}/{s}#{i}: mostly a copy of an answer passage")
                    continue
                kept.append((f"{pg['source']}/{pg['page']}/{s}#{i}" if pg["source"] != "git-manual"
                             else f"git-manual/{s}#{i}", t))
        if kept:
            per_source.setdefault(pg["source"], []).append((pg["page"], kept))

    distractors: dict[str, str] = {}
    distractor_pages: dict[tuple[str, str], list[str]] = {}
    for src, plist in per_source.items():
        cap = DISTRACTOR_CAPS.get(src, 500)
        order = sorted(plist, key=lambda x: hashlib.sha1(f"{src}/{x[0]}".encode()).hexdigest())
        n = 0
        for page, kept in order:
            if n + len(kept) > cap:
                dropped["over cap"] += len(kept)
                continue
            n += len(kept)
            for cid, t in kept:
                if cid in corpus or cid in distractors:
                    raise BuildError(f"duplicate passage id {cid}")
                distractors[cid] = t
                distractor_pages.setdefault((src, page), []).append(t)
    corpus.update(distractors)

    # --- checks ---
    problems = []
    for qid, cids in relevant.items():
        for cid in cids:
            if qkeys[qid] in norm_key(corpus[cid]):
                problems.append(f"question text inside its answer: {cid}")
    for cid, t in corpus.items():
        if not t.strip():
            problems.append(f"empty passage {cid}")
        if len(t) > MAX_CHARS:
            problems.append(f"passage over {MAX_CHARS} chars: {cid} ({len(t)})")
        if "\ufffd" in t or re.search(r"&(#\d+|#x[0-9a-fA-F]+|amp|lt|gt|quot|apos|nbsp|mdash|ndash|rsquo|lsquo|rdquo|ldquo);", t):
            problems.append(f"undecoded text in {cid}")
    for p in problems[:20]:
        log("PROBLEM " + p)

    # --- write ---
    ev = os.path.join(out, "eval")
    docs = os.path.join(out, "docs")
    if os.path.isdir(docs):
        shutil.rmtree(docs)
    os.makedirs(ev, exist_ok=True)
    os.makedirs(docs, exist_ok=True)

    def dump(name, obj):
        with open(os.path.join(ev, name), "w", encoding="utf-8") as fh:
            json.dump(obj, fh, ensure_ascii=False, indent=1)

    dump("human_corpus.json", corpus)
    dump("human_queries.json", queries)
    dump("human_relevant_docs.json", relevant)
    dump("human_dataset.json", {"queries": queries, "corpus": corpus, "relevant_docs": relevant})

    def write_doc(rel, paras):
        path = os.path.join(docs, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write("\n\n".join(paras).strip() + "\n")

    for qid, paras in answer_docs.items():
        src, key = qid.split("/", 1)
        write_doc(f"{src}/{key}.md", paras)
    for (src, page), texts in distractor_pages.items():
        write_doc(f"{src}/{page}.md", texts)
    # the docs must not hold any human question
    leak = 0
    for dirpath, _, files in os.walk(docs):
        for fn in files:
            tk = norm_key(open(os.path.join(dirpath, fn), encoding="utf-8").read())
            leak += sum(1 for qk in all_q if qk in tk)
    if leak:
        problems.append(f"{leak} question texts found inside docs/")

    # --- summary ---
    by_src: dict[str, list[int]] = {}
    for qid in queries:
        s = qid.split("/")[0]
        by_src.setdefault(s, [0, 0])
        by_src[s][0] += 1
        by_src[s][1] += len(relevant[qid])
    print("Human questions (held-out eval set)")
    for s, (nq, npas) in sorted(by_src.items()):
        print(f"  {s:12s} {nq:4d} questions  {npas:4d} answer passages")
    nans = sum(len(v) for v in relevant.values())
    nuniq = len({c for v in relevant.values() for c in v})
    print(f"  total        {len(queries):4d} questions  {nans:4d} answer passages ({nuniq} distinct)")
    dsrc: dict[str, int] = {}
    for cid in distractors:
        dsrc[cid.split("/")[0]] = dsrc.get(cid.split("/")[0], 0) + 1
    print("Distractor passages: " + ", ".join(f"{k} {v}" for k, v in sorted(dsrc.items()))
          + f"  (total {len(distractors)})")
    print("Dropped distractor passages: " + ", ".join(f"{k} {v}" for k, v in dropped.items()))
    if shared:
        print(f"Answer passages shared by two questions (identical answers): {shared}")
    if leaks_fixed:
        print(f"Answer paragraphs removed because they repeat the question: {leaks_fixed}")
    tot = sum(len(t) for t in corpus.values())
    print(f"Corpus: {len(corpus)} passages, {tot:,} characters (answers {sum(len(corpus[c]) for v in relevant.values() for c in v):,})")
    ndocs = sum(len(f) for _, _, f in os.walk(docs))
    print(f"Wrote {ev}/human_dataset.json (+ human_corpus/queries/relevant_docs.json)")
    print(f"Wrote {docs}/ ({ndocs} files)")
    if failures:
        print("Sources that failed: " + "; ".join(failures))
    if problems:
        print(f"{len(problems)} problems (see above)")

    if show:
        rng = random.Random(seed)
        print(f"\n{show} random (question, answer passage) pairs:")
        for qid in rng.sample(sorted(queries), min(show, len(queries))):
            cid = rng.choice(relevant[qid])
            print(f"\n--- {qid}  ->  {cid}\nQ: {queries[qid]}\nA: {corpus[cid]}")
    return 1 if problems or failures else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cache_default = os.path.join(os.path.expanduser("~"), ".cache", "embedfleet", "human-questions")
    ap.add_argument("--cache", default=cache_default, help="where the .deb files and their extracted tree go")
    ap.add_argument("--out", default=None, help="output dir (default CACHE/out)")
    ap.add_argument("--offline", action="store_true", help="never call apt-get; use the .deb files already cached")
    ap.add_argument("--show", type=int, default=10, help="print this many random (question, answer) pairs")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    out = a.out or os.path.join(a.cache, "out")
    try:
        root = fetch(a.cache, a.offline)
        return build(root, out, a.seed, a.show)
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
