"""The demo's closing report (Rich)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def print_report(f: dict[str, Any], console: Console) -> None:
    """Print the figures, three sample readers and the evaluation."""
    t = Table(title="personalization demo", show_header=False)
    rows = [
        ("readers / days", f"{f['users']} / {f['days']}"),
        (
            "catalogue",
            f"{f['catalog']['items']} items: {f['catalog']['passages']} passages in "
            f"{', '.join(f['catalog']['translations'])}, {f['catalog']['tags']} tags, "
            f"{f['embedding_dim']}-d embeddings (text {f['content_s']['load_s']} s, embeddings "
            f"{f['content_s']['embed_s']} s, import {f['content_s']['import_s']} s)",
        ),
        (
            "translation switching",
            f"{round(100 * f['translations_read']['events_in_other_translation'], 1)} % of events outside the "
            f"reader's usual translation; {round(100 * f['translations_read']['readers_using_several'], 1)} % of "
            f"readers use several; {f['translations_read']['readers_preferring_one_not_in_catalog']} prefer one "
            "the catalogue lacks",
        ),
        (
            "events simulated / stored",
            f"{f['events']} / {f['events_stored']} ({f['events_suppressed']} suppressed by privacy level, "
            f"{f.get('events_rejected', 0)} rejected)",
        ),
        ("HTTP ingest", f"{f['ingest_events_per_s']} events/s"),
        ("CDC relay start-up", f"{f['cdc_startup_s']} s"),
        ("CDC freshness (commit → consume)", f"p50 {f['cdc_p50_ms']} ms, p99 {f['cdc_p99_ms']} ms"),
        ("nightly job", f"{f['nightly_s']} s"),
        ("rollout variants", ", ".join(f"{k}: {v}" for k, v in f["variants"].items())),
        (
            "hit rate@10 personalized / popularity",
            f"{f['personalized_hit_rate']} / {f['popularity_hit_rate']} (lift {f['lift']})",
        ),
        ("total", f"{f['total_s']} s"),
    ]
    for k, v in rows:
        t.add_row(k, str(v))
    console.print(t)
    for s in f.get("samples", []):
        title = (
            f"reader {s['user_id']} (favours {', '.join(s['favoured_topics'])}; prefers "
            f"{s['preferred_translation']}, recommended in {s['recommended_in']})"
        )
        st = Table(title=title, title_justify="left")
        st.add_column("recommended")
        st.add_column("title")
        st.add_column("tags")
        st.add_column("opening")
        for r in s["recommendations"]:
            # KJV text marks its italic words with [brackets], which Rich would read as markup.
            st.add_row(r["content_id"], escape(str(r["title"])), ", ".join(r["tags"]), escape(r["opening"]))
        console.print(st)
        sig = ", ".join(f"{x['signal_type']}:{x['content_type']}={x['score']}" for x in s["top_signals"])
        console.print(f"  top signals: {escape(sig)}", soft_wrap=True)
        excluded = ", ".join(s["session_recent_excluded"]) or "-"
        console.print(f"  excluded (seen in the latest session): {escape(excluded)}", soft_wrap=True)
