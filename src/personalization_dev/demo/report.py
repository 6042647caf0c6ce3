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
        *(
            [("hit rate@10 recommender / popularity",
              f"{f['recommender_hit_rate']} / {f['popularity_hit_rate']} (lift {f['recommender_lift']})")]
            if "recommender_hit_rate" in f else []
        ),
        ("readers acting on their lists",
         f"{f['reaction_events_stored']} events on the {f['served_list']} lists they were served"),
        ("total", f"{f['total_s']} s"),
    ]
    for k, v in rows:
        t.add_row(k, str(v))
    console.print(t)
    _print_experiment(f["experiment"], console)
    _print_recommender(f.get("recommender"), console)
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
        _print_platform_list(s.get("platform_recommendations"), console)
        sig = ", ".join(f"{x['signal_type']}:{x['content_type']}={x['score']}" for x in s["top_signals"])
        console.print(f"  top signals: {escape(sig)}", soft_wrap=True)
        excluded = ", ".join(s["session_recent_excluded"]) or "-"
        console.print(f"  excluded (seen in the latest session): {escape(excluded)}", soft_wrap=True)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.2f} %"


def _p(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def _print_experiment(e: dict[str, Any], console: Console) -> None:
    """The readout of the ``personalization`` rollout: per metric, the arms and the uplift of on over off."""
    exposures = ", ".join(f"{k}: {v}" for k, v in e["exposures"].items()) or "none"
    console.print(f"experiment {e['flag']}, phase {e['phase']} (exposures by variant/reason: {exposures})",
                  soft_wrap=True)
    for name, m in e["metrics"].items():
        arms = "; ".join(f"{v['variant']}: {v['users']} readers, mean {v['mean']}" for v in m["variants"])
        ci = "n/a" if m["ci95"] is None else f"[{_pct(m['ci95'][0])}, {_pct(m['ci95'][1])}]"
        chance = "n/a" if m["chance_to_win"] is None else f"{100 * m['chance_to_win']:.1f} %"
        console.print(f"  {name}: {arms}", soft_wrap=True)
        console.print(f"    uplift of on over off {_pct(m['uplift'])}, 95 % CI {ci}, p-value {_p(m['p_value'])}, "
                      f"SRM p-value {_p(m['srm_p_value'])}, chance to win {chance}", soft_wrap=True)
        console.print(f"    {escape(m['verdict'])}", soft_wrap=True)


def _print_recommender(r: dict[str, Any] | None, console: Console) -> None:
    """``eval recommendations``: the recommender against popularity and implicit's ALS on a time split."""
    if r is None:
        console.print("recommender not installed: the API has no /v1/users/{id}/recommendations route")
        return
    t = Table(title=f"offline evaluation (eval recommendations, {r['test_readers']} test readers)",
              title_justify="left")
    for col in ("method", f"ndcg@{r['k']}", f"recall@{r['k']}", "coverage"):
        t.add_column(col)
    for name, m in r["methods"].items():
        t.add_row(name, *(_p(m.get(x)) for x in ("ndcg", "recall", "coverage")))
    console.print(t)


def _print_platform_list(rec: dict[str, Any] | None, console: Console) -> None:
    if rec is None:
        return
    t = Table(title=f"  the platform's recommendations ({rec['variant']})", title_justify="left")
    t.add_column("recommended")
    t.add_column("title")
    t.add_column("reasons")
    for it in rec["items"]:
        t.add_row(it["content_id"], escape(str(it["title"])), escape(", ".join(it["reasons"])))
    console.print(t)
