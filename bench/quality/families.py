"""python -m bench.quality.families --models DIR: each file's cosine to sentence-transformers (fp32) per language
family and script, on a tuning part and a checking part, beside the 205 reference texts.

The texts come from what installed packages ship (`pip install django chatterbot-corpus gensim`; nothing is
downloaded when it runs): Django's translation catalogues (every `msgstr` of django/**/locale/<lang>/LC_MESSAGES,
consecutive messages joined into texts of TEXT_CHARS or more), chatterbot-corpus's conversations, gensim's
test corpora (Lee's news documents, Crime and Punishment), CPython's standard-library functions and Django's
JavaScript; long documents and repetitive edge texts are built from them. Document mode
(`title: none | text: `), as the README's table.

Every text belongs to one part by a hash of itself (`part`): the tuning part is what recipe decisions may look
at, the checking part is what they are judged on and no decision may read (converter code never imports
this module). Per family and part, PER_PART texts (LONG_PER_PART long documents, EDGE_PER_PART repetitive
ones) are taken in hash order, round robin over the family's languages.

The fp32 reference embeddings are computed once with sentence-transformers from EDGEGEMMA_HF_MODEL
(one text per call) and cached in ~/.cache/edgegemma-families; each file's embeddings are cached by its
size and mtime in $TMPDIR/edgegemma-quality-cache.
"""
from __future__ import annotations

import argparse
import ast
import glob
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from .tasks import module_source

PER_PART = 30
LONG_PER_PART = 10
EDGE_PER_PART = 24
TEXT_CHARS = 200  # a catalogue text: consecutive messages joined until at least this long
TEXT_MAX_CHARS = 600
LONG_CHARS = {"latin": 6000, "other": 2400}  # ~1,200-1,700 tokens, under the model's 2,048
PARTS = ("tuning", "checking")

# Language family / script -> (Django locale codes, chatterbot-corpus folders).
SCRIPTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "latin": (("de", "fr", "es", "it", "pt", "pl", "cs", "nl", "sv", "fi", "hu", "ro", "hr", "tr", "lt", "lv", "et",
               "eu", "ca", "da", "sk", "sl", "is", "ga", "cy", "az", "uz"),
              ("english", "german", "french", "spanish", "italian", "portuguese", "dutch", "swedish", "turkish")),
    "cyrillic": (("ru", "uk", "bg", "sr", "mk", "be", "kk", "mn", "ky", "tg", "tt"), ("russian", "ukrainian")),
    "greek": (("el",), ()),
    "arabic_hebrew": (("ar", "fa", "ur", "he", "ckb", "ug"), ("hebrew", "persian", "urdu")),
    "indic": (("hi", "bn", "mr", "ne", "pa", "ta", "te", "kn", "ml"),
              ("hindi", "bengali", "marathi", "tamil", "telugu", "oriya")),
    "cjk": (("ja", "ko", "zh_Hans", "zh_Hant"), ("chinese", "japanese", "korean", "traditionalchinese")),
    "southeast_asian": (("th", "km", "my", "vi", "id", "ms"), ("thai", "indonesian")),
    "african": (("sw", "ig", "kab", "af", "am"), ("yoruba",)),
    "armenian_georgian": (("hy", "ka"), ()),
}
FAMILIES = (*SCRIPTS, "code", "long", "repetitive")

# Standard-library modules for the code family: neither calibration's (converter/calibration_texts.py) nor
# the code-retrieval task's (bench/quality/tasks.py).
CODE_MODULES = ("asyncio.base_events", "asyncio.tasks", "concurrent.futures._base", "sqlite3.dump", "unittest.case",
                "xml.dom.minidom", "zipimport", "sysconfig", "importlib.metadata", "http.server", "wsgiref.handlers",
                "operator", "queue", "trace", "timeit", "secrets", "numbers", "modulefinder", "lzma", "bz2",
                "compileall", "py_compile", "runpy", "rlcompleter", "symtable", "webbrowser", "zipapp", "tomllib._parser")
CODE_MAX_CHARS = 1500


def part(text: str) -> str:
    """The part a text belongs to, by its hash: the same text is always in the same part."""
    return PARTS[hashlib.sha256(text.encode("utf-8")).digest()[0] & 1]


def _order(text: str) -> bytes:
    return hashlib.sha256(b"order:" + text.encode("utf-8")).digest()


def _package_dir(name: str) -> str:
    module = __import__(name)
    return os.path.dirname(module.__file__)


def _po_messages(path: str) -> list[str]:
    """The translated strings (msgstr, msgstr[n]) of a .po file, in file order, without the header."""
    out, current, inside = [], [], False

    def flush():
        text = "".join(current).strip()
        if text:
            out.append(text)

    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line.startswith("msgstr"):
                flush()
                current, inside = [ast.literal_eval(line.split(" ", 1)[1])], True
            elif line.startswith('"') and inside:
                current.append(ast.literal_eval(line))
            else:
                if inside:
                    flush()
                current, inside = [], False
    flush()
    return [m for m in out if not m.startswith(("Project-Id-Version", "Content-Type"))]


def _catalogue(lang: str) -> list[str]:
    root = _package_dir("django")
    paths = sorted(glob.glob(os.path.join(root, "**", "locale", lang, "LC_MESSAGES", "*.po"), recursive=True))
    return [m for p in paths for m in _po_messages(p)]


def _joined(messages: list[str], least: int, most: int) -> list[str]:
    """Consecutive messages joined with spaces into texts of `least` characters or more (cut at `most`)."""
    texts, current = [], ""
    for m in messages:
        current = f"{current} {m}" if current else m
        if len(current) >= least:
            texts.append(current[:most])
            current = ""
    return texts


def _conversations(folder: str) -> list[str]:
    import yaml

    root = os.path.join(_package_dir("chatterbot_corpus"), "data", folder)
    out = []
    for name in sorted(os.listdir(root)):
        with open(os.path.join(root, name), encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
        for conv in data.get("conversations") or []:
            text = "\n".join(t.strip() for t in conv if isinstance(t, str) and t.strip())
            if len(text) >= 20:
                out.append(text[:TEXT_MAX_CHARS])
    return out


def _script_candidates(family: str) -> dict[str, list[str]]:
    """Language -> candidate texts of one script family."""
    django_langs, chatterbot_langs = SCRIPTS[family]
    out = {lang: _joined(_catalogue(lang), TEXT_CHARS, TEXT_MAX_CHARS) for lang in django_langs}
    out.update({f"chatterbot-{lang}": _conversations(lang) for lang in chatterbot_langs})
    return {lang: texts for lang, texts in out.items() if texts}


def _code_candidates() -> dict[str, list[str]]:
    """Python: every function of CODE_MODULES of 200 characters or more, as written (docstring and comments
    included); JavaScript: Django's admin scripts in pieces of CODE_MAX_CHARS."""
    python = []
    for name in CODE_MODULES:
        source = module_source(name)
        if source is None:
            continue
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                text = "\n".join(lines[node.lineno - 1:node.end_lineno])
                if len(text) >= 200:
                    python.append(text[:CODE_MAX_CHARS])
    javascript = []
    for path in sorted(glob.glob(os.path.join(_package_dir("django"), "**", "*.js"), recursive=True)):
        if path.endswith(".min.js") or "vendor" in path:
            continue
        with open(path, encoding="utf-8") as f:
            source = f.read()
        javascript += [source[i:i + CODE_MAX_CHARS] for i in range(0, len(source), CODE_MAX_CHARS)
                       if len(source[i:i + CODE_MAX_CHARS]) >= 200]
    return {"python": python, "javascript": javascript}


def _long_candidates() -> dict[str, list[str]]:
    """Long documents: Lee's news documents and Crime and Punishment in pieces of LONG_CHARS; whole
    catalogues of six scripts joined likewise."""
    data = os.path.join(_package_dir("gensim"), "test", "test_data")
    with open(os.path.join(data, "lee_background.cor"), encoding="latin-1") as f:
        news = [line.strip() for line in f if line.strip()]
    with open(os.path.join(data, "crime-and-punishment.txt"), encoding="utf-8") as f:
        novel = " ".join(f.read().split())
    out = {"lee-news": _joined(news, LONG_CHARS["latin"] - 1500, LONG_CHARS["latin"]),
           "crime-and-punishment": _joined(novel.split(". "), LONG_CHARS["latin"] - 500, LONG_CHARS["latin"])}
    for lang in ("ru", "ar", "hi", "ja", "zh_Hans", "th", "de", "el"):
        cut = LONG_CHARS["latin" if lang == "de" else "other"]
        out[lang] = _joined(_catalogue(lang), cut - 300, cut)
    return out


def _repetitive_candidates() -> dict[str, list[str]]:
    """Edge texts: a unit (a word, a phrase, a character, a symbol) repeated 8 to 400 times."""
    units = {
        "word": ["the", "hello", "Mars", "data", "привет", "γεια", "שלום", "مرحبا", "नमस्ते", "你好", "こんにちは",
                 "안녕", "สวัสดี", "habari", "ok", "yes no"],
        "char": ["a", "x", "-", "=", ".", "!", "?", "*", "#", "0", "1", "😀", "🙂", "ä", "я", "あ", "中", " .", "\t"],
        "phrase": ["I love this. ", "Lorem ipsum dolor sit amet. ", "buy now! ", "ha", "la la ", "12345 ",
                   "<div></div>", "def f(): pass\n", "Привет, мир! ", "这是一个测试。", "ok, ok, ", "na na na, hey hey "],
    }
    out: dict[str, list[str]] = {}
    for kind, items in units.items():
        for unit in items:
            for count in (8, 32, 128, 400):
                joiner = "" if kind != "word" else " "
                out.setdefault(kind, []).append(joiner.join([unit] * count))
    return out


def _pick(candidates: dict[str, list[str]], n: int) -> dict[str, list[str]]:
    """Per part, n texts in hash order, round robin over the languages (sorted); no text twice."""
    picked = {}
    for name in PARTS:
        pools = [sorted({t for t in texts if part(t) == name}, key=_order) for _, texts in sorted(candidates.items())]
        chosen, seen, depth = [], set(), 0
        while len(chosen) < n and any(depth < len(p) for p in pools):
            for pool in pools:
                if depth < len(pool) and len(chosen) < n and pool[depth] not in seen:
                    chosen.append(pool[depth])
                    seen.add(pool[depth])
            depth += 1
        picked[name] = chosen
    return picked


def family_texts() -> dict[str, dict[str, list[str]]]:
    """family -> part -> texts."""
    out = {family: _pick(_script_candidates(family), PER_PART) for family in SCRIPTS}
    out["code"] = _pick(_code_candidates(), PER_PART)
    out["long"] = _pick(_long_candidates(), LONG_PER_PART)
    out["repetitive"] = _pick(_repetitive_candidates(), EDGE_PER_PART)
    return out


def tuning_corpus() -> dict[str, list[str]]:
    """Every candidate text of the tuning part, not only those the evaluation picks, by source and language
    ("latin/de", "code/python", ...): the multilingual corpus recipe decisions may count tokens in (no text of
    the checking part is in it)."""
    pools = {f: _script_candidates(f) for f in SCRIPTS}
    pools.update(code=_code_candidates(), long=_long_candidates(), repetitive=_repetitive_candidates())
    return {f"{family}/{lang}": [t for t in texts if part(t) == "tuning"]
            for family, pool in pools.items() for lang, texts in pool.items()}


def tuning_texts() -> list[str]:
    """Every text of the tuning part, all families: what recipe decisions may be measured on."""
    return [t for parts in family_texts().values() for t in parts["tuning"]]


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:20]


def reference_embeddings(texts: list[str], checkpoint: str) -> np.ndarray:
    """sentence-transformers' fp32 document embeddings of `texts`, one text per call; cached per text."""
    cache = Path.home() / ".cache" / "edgegemma-families" / f"st-fp32-{_digest(str(Path(checkpoint).resolve()))}"
    cache.mkdir(parents=True, exist_ok=True)
    files = [cache / f"{hashlib.sha256(t.encode('utf-8')).hexdigest()[:32]}.npy" for t in texts]
    missing = [i for i, f in enumerate(files) if not f.is_file()]
    if missing:
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
        st = SentenceTransformer(checkpoint, device="cpu", model_kwargs={"torch_dtype": torch.float32})
        started = time.perf_counter()
        for i in missing:
            np.save(files[i], st.encode_document([texts[i]], batch_size=1, convert_to_numpy=True)[0].astype(np.float32))
        print(f"sentence-transformers fp32: {len(missing)} texts in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return np.stack([np.load(f) for f in files])


def file_embeddings(model, path: Path, texts: list[str], cache: Path) -> np.ndarray:
    st = path.stat()
    f = cache / f"families-{_digest(str(path.resolve()), st.st_size, st.st_mtime_ns, texts)}.npy"
    if f.is_file():
        return np.load(f)
    out = model.encode_document(texts, batch_size=16)
    np.save(f, out)
    return out


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def flat(texts: dict[str, dict[str, list[str]]]) -> tuple[list[str], list[tuple[str, str]]]:
    """All texts in one list, and each one's (family, part)."""
    out, where = [], []
    for family, parts in texts.items():
        for name in PARTS:
            out += parts[name]
            where += [(family, name)] * len(parts[name])
    return out, where


def by_family(cos: np.ndarray, where: list[tuple[str, str]]) -> dict[tuple[str, str], np.ndarray]:
    out: dict[tuple[str, str], list[float]] = {}
    for c, key in zip(cos, where):
        out.setdefault(key, []).append(float(c))
    return {k: np.array(v) for k, v in out.items()}


def reference_set_cosines(model) -> np.ndarray:
    """The 205 reference texts, document mode, without the one that spells special tokens literally."""
    from bench.quantizers import SPECIAL_TOKEN_TEXT
    from bench.workloads import reference_dir, reference_texts

    folder = reference_dir()
    _, texts, rows = reference_texts(folder)
    expected = np.load(folder / "emb_document_fp32.npy")[rows]
    keep = [i for i, t in enumerate(texts) if not SPECIAL_TOKEN_TEXT.search(t)]
    return cosines(model.encode_document([texts[i] for i in keep], batch_size=16), expected[keep])


def table(results: dict[str, dict], families: list[str]) -> str:
    """One row per family (then all texts, then the reference set); per file a tuning and a checking column."""
    names = list(results)
    parts = [p for p in PARTS if any((f, p) in r for r in results.values() for f in families)]
    lines = ["| family | " + " | ".join(f"{n} {p}" for n in names for p in parts) + " |",
             "|---|" + "---|" * (len(parts) * len(names))]

    def cell(c: np.ndarray | None) -> str:
        return f"{c.mean():.5f} / {c.min():.4f}" if c is not None and len(c) else ""

    for f in families:
        lines.append(f"| {f} | " + " | ".join(cell(results[n].get((f, p))) for n in names for p in parts) + " |")
    every = {(n, p): np.concatenate([results[n][(f, p)] for f in families]) for n in names for p in parts}
    lines.append("| **all** | " + " | ".join(cell(every[(n, p)]) for n in names for p in parts) + " |")
    if any("reference" in r for r in results.values()):
        lines.append("| reference set | " + " | ".join(cell(results[n].get("reference")) if p == parts[-1] else ""
                                                       for n in names for p in parts) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.quality.families", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=".", help="folder with the <recipe>.gguf files (--recipes may also name .gguf files)")
    p.add_argument("--recipes", nargs="+", default=["q8_0", "e4_q8", "mixed", "q4_0"])
    p.add_argument("--checkpoint", default=os.environ.get("EDGEGEMMA_HF_MODEL", str(Path.home() / ".cache/edgegemma/embeddinggemma-300m")))
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="measure only these parts")
    p.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES), help="measure only these families")
    p.add_argument("--no-reference-set", action="store_true", help="skip the 205 reference texts")
    p.add_argument("--cache", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "edgegemma-quality-cache"))
    p.add_argument("--json", help="also write every text's cosine here")
    args = p.parse_args(argv)

    import edgegemma

    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    texts = {f: {n: ps[n] if n in args.parts else [] for n in PARTS} for f, ps in family_texts().items()
             if f in args.families}
    everything, where = flat(texts)
    counts = {f: {n: len(ps[n]) for n in PARTS} for f, ps in texts.items()}
    print("texts per family (tuning / checking): " + ", ".join(f"{f} {c['tuning']}/{c['checking']}" for f, c in counts.items()),
          file=sys.stderr)
    expected = reference_embeddings(everything, args.checkpoint)
    results: dict[str, dict] = {}
    for recipe in args.recipes:
        path = Path(recipe) if recipe.endswith(".gguf") else Path(args.models) / f"{recipe}.gguf"
        if not path.is_file():
            print(f"skip {recipe}: no {path}", file=sys.stderr)
            continue
        started = time.perf_counter()
        model = edgegemma.load(path)
        got = file_embeddings(model, path, everything, cache)
        name = f"{path.parent.name}/{path.stem}" if recipe.endswith(".gguf") else path.stem
        results[name] = by_family(cosines(got, expected), where)
        if not args.no_reference_set:
            results[name]["reference"] = reference_set_cosines(model)
        print(f"{name}: {path.stat().st_size / 2**20:.1f} MiB, {time.perf_counter() - started:.0f} s", file=sys.stderr)
    families = list(texts)
    print("cosine to sentence-transformers fp32, document mode, mean / min; the reference set (204 of its 205 "
          "texts: not the one spelling special tokens literally) in the checking columns\n")
    print(table(results, families))
    if args.json:
        Path(args.json).write_text(json.dumps({name: {f"{k[0]}/{k[1]}" if isinstance(k, tuple) else k: v.tolist()
                                                      for k, v in r.items()} for name, r in results.items()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
