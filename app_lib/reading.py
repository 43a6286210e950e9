"""A reading from the core on a page: its sentences (mnist_lab.i18n.Message) and lists of them,
worded in the session's language and made plain markdown (no formatting from the values)."""
from __future__ import annotations

from app_lib.lang import render_error
from app_lib.text import plain
from mnist_lab.i18n import Message


def reading_markdown(blocks: list[Message | list[Message]]) -> str:
    """A paragraph per Message, a bulleted list per list of them."""
    return "\n\n".join("\n".join("- " + plain(render_error(m)) for m in block) if isinstance(block, list)
                       else plain(render_error(block)) for block in blocks)
