"""The one registry line each dummy needs: exactly what a newcomer adds to the table in src/."""

from butd.registry import Entry

LINES = {
    "butd.models.registry:MODELS": ("gru-caption", Entry(
        "dummy_caption_model:GruCaptionConfig", "dummy_caption_model:GruCaption", "GRU + attention (dummy)",
        {"task": "caption"})),
    "butd.extract.registry:EXTRACTORS": ("colour-grid", Entry(
        "dummy_extractor:ColourGridConfig", "dummy_extractor:build", "2x2 mean colours (dummy)")),
    "butd.shards.importers:IMPORT_FORMATS": ("jsonl-demo", Entry(
        None, "dummy_import_format:read_jsonl", "JSON lines of boxes + features (dummy)")),
}


def register_all(setitem=None) -> None:
    """Add the three lines (``setitem``: monkeypatch.setitem, so a test's registrations are undone after it)."""
    from butd.registry import resolve

    for ref, (name, entry) in LINES.items():
        table = resolve(ref).table
        if setitem is not None:
            setitem(table, name, entry)
        else:
            table[name] = entry
