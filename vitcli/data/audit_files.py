"""What `vit audit --out DIR` writes: a contact sheet per duplicate group, report.md and
audit.json.

A contact sheet shows up to SHEET_MAX members of one group side by side, each labelled with
its class, split and file name, so that a person can judge the group at a glance. Names are
drawn and written as they are, with control characters made visible; in report.md they sit
in HTML-escaped <code> spans, so a file name cannot inject markup.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from vitcli.data.audit import AuditReport, Group
from vitcli.data.discovery import display, empty_class_words
from vitcli.data.sources import empty_class_advice
from vitcli.files import atomic_write, shown_path

SHEET_MAX = 8  # members drawn per sheet; the rest are named in the report
SHEETS_MAX = 200  # sheets written per audit (fail-first order); the JSON lists every group
THUMB = 160  # px, the longer side of each thumbnail
_LABEL_LINES = 4
# Control characters and bidirectional overrides: shown as escapes, never drawn or written raw.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def visible(text: str) -> str:
    """`text` printable anywhere (pictures, Markdown): undecodable bytes of a file name as
    \\xNN (discovery.display), control characters and bidi overrides as \\xNN / \\uNNNN."""
    return _UNSAFE.sub(lambda m: (f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                                  else f"\\u{ord(m.group()):04x}"), display(text))


def _font(size: int) -> Any:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> str:
    """`text` cut in the middle with … until it fits `width` px."""
    if draw.textlength(text, font=font) <= width:
        return text
    keep = len(text)
    while keep > 4:
        keep -= 1
        cut = text[: keep // 2] + "…" + text[len(text) - keep // 2:]
        if draw.textlength(cut, font=font) <= width:
            return cut
    return text[:4] + "…"


MATCHES = {"bytes": "exact duplicates (same bytes)",
           "pixels": "exact duplicates (same pixels, different files)",
           "perceptual": "near-duplicates (perceptual hash)",
           "features": "look-alikes to the model (class-token cosine)"}


def group_title(group: Group) -> str:
    """'exact duplicates (same bytes), across splits' and the like."""
    return f"{MATCHES[group.match]}, {group.scope}"


def contact_sheet(report: AuditReport, group: Group, path: Path,
                  root: str | None = None) -> Path:
    """A PNG of the group's first SHEET_MAX images, each labelled class / split / file."""
    from vitcli.images import open_image

    members = group.members[:SHEET_MAX]
    font, bold = _font(13), _font(15)
    pad, line = 8, 17
    cell_w, cell_h = THUMB + 2 * pad, THUMB + _LABEL_LINES * line + 2 * pad
    title_h = 48
    cols = min(len(members), 4)
    rows = -(-len(members) // cols)
    sheet = Image.new("RGB", (cols * cell_w, title_h + rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    more = len(group.members) - len(members)
    colour = (170, 20, 20) if group.fails else (30, 30, 30)
    titles = [MATCHES[group.match], group.scope + (" (fails the audit)" if group.fails else "")
              + (f", +{more} more not shown" if more else "")]
    for k, title in enumerate(titles):
        draw.text((pad, 6 + 19 * k), _fit(draw, title, bold, sheet.width - 2 * pad),
                  fill=colour, font=bold)
    for n, i in enumerate(members):
        f = report.files[i]
        x0, y0 = (n % cols) * cell_w, title_h + (n // cols) * cell_h
        try:
            im = open_image(f.path, "RGB")
        except Exception:  # noqa: BLE001 - the file changed since it was read: a grey box
            im = Image.new("RGB", (THUMB, THUMB), (200, 200, 200))
        im.thumbnail((THUMB, THUMB), Image.Resampling.LANCZOS)
        if max(im.size) < THUMB:  # tiny images are enlarged, pixels kept sharp
            scale = THUMB / max(im.size)
            im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                           Image.Resampling.NEAREST)
        sheet.paste(im, (x0 + pad + (THUMB - im.width) // 2, y0 + pad + (THUMB - im.height) // 2))
        draw.rectangle([x0 + pad - 1, y0 + pad - 1, x0 + pad + THUMB, y0 + pad + THUMB],
                       outline=(180, 180, 180))
        name = shown_path(f.path, root)
        lines = [_fit(draw, visible(f"{f.label} · {f.split}"), bold, THUMB),
                 f"{f.width}x{f.height} {f.format} {f.mode}",
                 *_wrap(draw, visible(name), font, THUMB)]
        for k, text in enumerate(lines[:_LABEL_LINES]):
            draw.text((x0 + pad, y0 + pad + THUMB + 4 + k * line), text, fill=(20, 20, 20),
                      font=bold if k == 0 else font)
    return atomic_write(path, lambda tmp: sheet.save(tmp, format="PNG", optimize=True))


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> list[str]:
    """The file name on at most two lines: the folder part and the file, each cut to fit."""
    head, _, tail = text.rpartition("/")
    if not head:
        return [_fit(draw, tail, font, width)]
    return [_fit(draw, head + "/", font, width), _fit(draw, tail, font, width)]


def write_outputs(report: AuditReport, out: Path) -> dict[str, Any]:
    """Contact sheets under out/groups/, out/report.md and out/audit.json; their paths."""
    out.mkdir(parents=True, exist_ok=True)
    sheets: dict[int, Path] = {}
    if report.groups:
        (out / "groups").mkdir(exist_ok=True)
    for n, group in enumerate(report.groups[:SHEETS_MAX], 1):
        sheets[n - 1] = contact_sheet(report, group, out / "groups" / f"group-{n:03d}.png",
                                      root=report.data)
    data = report.to_dict()
    for n, entry in enumerate(data["groups"]):
        entry["contact_sheet"] = str(sheets[n].relative_to(out)) if n in sheets else None
    # ASCII JSON: exact names survive, undecodable bytes too (as \udcNN surrogate escapes).
    text = json.dumps(data, indent=2) + "\n"
    json_path = atomic_write(out / "audit.json", lambda tmp: tmp.write_text(text, "utf-8"))
    md = markdown(report, data)
    md_path = atomic_write(out / "report.md", lambda tmp: tmp.write_text(md, "utf-8"))
    return {"json": json_path, "report": md_path, "sheets": list(sheets.values()),
            "data": data}


def _code(text: str) -> str:
    return f"<code>{html.escape(visible(text))}</code>"


def markdown(report: AuditReport, data: dict[str, Any]) -> str:
    """report.md: the verdict, counts, properties, problems and every group with its sheet."""
    verdict = ("**FAILED**: leakage between splits or images under two labels"
               if report.failed else "**clean**: no leakage, no image under two labels")
    lines = [f"# vit audit: {html.escape(visible(report.data))}", "", verdict, "",
             "## Images per class and split", "",
             "| class | " + " | ".join(report.splits) + " |",
             "|---|" + "---:|" * len(report.splits)]
    counts = report.counts()
    for name in report.class_names:
        lines.append(f"| {_code(name)} | "
                     + " | ".join(f"{counts[s][name]:,}" for s in report.splits) + " |")
    ratios = ", ".join(f"{s} {r:.3g}:1" for s, r in report.imbalance().items())
    lines += ["", f"Imbalance (largest class / smallest): {ratios}.", ""]
    s = data["summary"]
    if s:
        lines += ["## Images", "",
                  f"- width {s['width']['min']}–{s['width']['max']} px (median "
                  f"{s['width']['median']:g}), height {s['height']['min']}–{s['height']['max']} "
                  f"px (median {s['height']['median']:g}); most common sizes: "
                  + ", ".join(f"{k} ({v:,})" for k, v in s["sizes"].items()),
                  f"- aspect ratio (width / height) {s['aspect_ratio']['min']:g}–"
                  f"{s['aspect_ratio']['max']:g}, median {s['aspect_ratio']['median']:g}",
                  "- colour modes: " + ", ".join(f"{k} ({v:,})" for k, v in s["modes"].items())
                  + "; bits per channel: " + ", ".join(f"{k} ({v:,})" for k, v in
                                                       s["bits"].items())
                  + "; formats: " + ", ".join(f"{k} ({v:,})" for k, v in s["formats"].items()),
                  ""]
    if report.empty_classes:  # in the words `vit train` refuses them with
        lines += [f"## Empty class folders ({len(report.empty_classes):,})", ""]
        lines += [f"- {_code(shown_path(e.path, report.data))}: "
                  + html.escape(visible(empty_class_words(e.name)), quote=False)
                  for e in report.empty_classes]
        lines += ["", f"{empty_class_advice(len(report.empty_classes))}.", ""]
    if report.unreadable:
        lines += [f"## Unreadable files ({len(report.unreadable):,})", ""]
        lines += [f"- {_code(shown_path(f.path, report.data))}: {html.escape(visible(f.error))}"
                  for f in report.unreadable] + [""]
    t = report.thresholds
    lines += [f"## Duplicate groups ({len(report.groups):,})", "",
              f"Exact: the same file bytes, or the same decoded pixels. Near: dHash and pHash "
              f"each within {t['near_hash_bits']} of 64 bits and the 32×32 thumbnails' cosine "
              f"≥ {t['near_thumbnail_cosine']}, colours (chromaticity) within "
              f"{t['near_chroma']} (measured to catch JPEG re-encoding, resizing ×0.5–×2 and "
              "±15 % brightness, and no pair of distinct images; see docs/audit.md in vitcli). "
              "Groups across splits or classes fail the audit."
              + (f" With --model: class-token cosine ≥ {t['model_cosine']}; such groups are "
                 "look-alikes to the model, shown and never failing." if "model_cosine" in t
                 else ""), ""]
    for n, (group, entry) in enumerate(zip(report.groups, data["groups"], strict=True), 1):
        mark = " — **fails**" if group.fails else ""
        lines += [f"### {n}. {group_title(group)}{mark}", ""]
        if entry.get("contact_sheet"):
            lines += [f"![group {n}]({entry['contact_sheet']})", ""]
        lines += [f"- {_code(shown_path(report.files[i].path, report.data))} "
                  f"({_code(report.files[i].label)}, "
                  f"{report.files[i].split})" for i in group.members] + [""]
    return "\n".join(lines)
