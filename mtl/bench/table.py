"""The benchmark's table: what ``mtl bench`` prints from its ``bench.json`` (the headline ratios
against the official code's structure and the hardware floor, and the rows of the methods batched
over a meta-batch against their per-task loops)."""

from __future__ import annotations


def _method_lines(r: dict) -> list[str]:
    """The rows of the methods batched over a meta-batch against their per-task loops (files of
    earlier versions have MAML's alone, without its label)."""
    keys = [key for key in ("maml", "meta_lstm", "tadam", "mann") if key in r]
    if not keys:
        return []
    lines = [
        "| method, meta-train tasks/s | batched | per-task loop | ratio | peak MB (batched / loop) |",
        "|---|---:|---:|---:|---:|",
    ]
    for key in keys:
        q, s = r[key], r["setup"]
        label = q.get("label", "MAML")
        what = q.get("what", "Conv-4, {inner_steps} steps, second order").format(**q)
        lines += [
            f"| {label} ({what}, meta-batch {s['meta_batch']}) | "
            f"{q['batched_tasks_per_s']:.2f} | {q['per_task_tasks_per_s']:.2f} | "
            f"**{q['speedup']:.1f}x** | {q['batched_peak_mb']:.0f} / {q['per_task_peak_mb']:.0f} |",
        ]
    for key in keys:
        q = r[key]
        lines.append(
            f"{q.get('label', 'MAML')} first-step loss: batched {q['first_step_loss_batched']:.6f}, "
            f"per task {q['first_step_loss_per_task']:.6f} (fp32)."
        )
    return lines


def _headline_lines(r: dict) -> list[str]:
    """The figures a user's paper run sees: the paper-protocol speed-up and each path against its floor."""
    if "paper_protocol" not in r:
        return []
    pp, f = r["paper_protocol"], r["floors"]
    same = "identical" if pp["identical_accuracies_fp32"] else "DIFFERENT"
    drawn = f"{pp['distinct_images']} drawn, each {pp['draws_per_image']:.1f}×"
    both = f"{f['precision']} / {f['precision']}"
    return [
        "| headline | figure | precision (mtl / floor or reference) |",
        "|---|---:|---|",
        f"| meta-test speed-up at the paper's protocol: {pp['episodes']} episodes over {pp['classes']} × "
        f"{pp['images_per_class']} images ({drawn}) | "
        f"**{pp['speedup']:.1f}x** ({pp['fast_episodes_per_s']:.1f} vs {pp['reference_episodes_per_s']:.2f} "
        f"episodes/s) | {pp['precision']} / fp32 |",
        f"| meta-train step against its floor: bare SS-encoder forward + backward of the meta-batch's "
        f"{f['metatrain']['images']} images | **{f['metatrain']['efficiency']:.2f}** "
        f"({f['metatrain']['mtl_s']:.3f} s vs {f['metatrain']['floor_s']:.3f} s) | {both} |",
        f"| meta-test per distinct image against its floor (paper protocol): bare inference forward | "
        f"**{pp['efficiency']:.2f}** ({1e3 * pp['mtl_s_per_image']:.3f} ms vs "
        f"{1e3 * pp['floor_s_per_image']:.3f} ms) | {both} |",
        "",
        f"Paper protocol, the {pp['episodes_compared']} episodes both ran: reference "
        f"{pp['accuracy_reference']:.2f}%, mtl in fp32 {pp['accuracy_fast_fp32']:.2f}% ({same} per episode).",
    ]


def bench_table(r: dict) -> list[str]:
    """``bench.json``'s measurements as Markdown lines."""
    s, t, m, p = r["setup"], r["metatest"], r["metatrain"], r["pretrain"]
    same = "identical" if t["identical_accuracies_fp32"] else "DIFFERENT"
    reuse = s["test_episodes"] * s["way"] * (s["shot"] + s["query"]) / (s["classes"] * s["images_per_class"])
    lines = [
        f"mtl bench ({r['mode']}) on {r['device']}, {r['threads']} threads, torch {r['torch']}, "
        f"encoder precision {r['precision']}: ResNet-12 {'-'.join(map(str, s['widths']))}, "
        f"{s['image_size']}x{s['image_size']} glyphs, {s['way']}-way {s['shot']}-shot {s['query']}-query, "
        f"{s['inner_steps']} inner steps",
        "",
        *_headline_lines(r),
        "",
        "| path | mtl | reference | ratio | peak MB (mtl / ref) |",
        "|---|---:|---:|---:|---:|",
        f"| meta-test, episodes/s, high reuse ({s['classes'] * s['images_per_class']} images, "
        f"{s['test_episodes']} episodes, each image drawn "
        f"{reuse:.0f}×) | {t['fast_episodes_per_s']:.1f} | {t['reference_episodes_per_s']:.2f} | "
        f"**{t['speedup']:.1f}x** | {t['fast_peak_mb']:.0f} / {t['reference_peak_mb']:.0f} |",
        f"| meta-train, tasks/s (second order, meta-batch {s['meta_batch']}) | {m['fast_tasks_per_s']:.2f} | "
        f"{m['reference_tasks_per_s']:.2f} | **{m['speedup']:.1f}x** | "
        f"{m['fast_peak_mb']:.0f} / {m['reference_peak_mb']:.0f} |",
        f"| meta-train in fp32 | {m['fast_fp32_tasks_per_s']:.2f} | {m['reference_tasks_per_s']:.2f} | "
        f"{m['speedup_fp32']:.1f}x | |",
        f"| pretrain, images/s (vs bare forward+backward+SGD on synthetic tensors) | "
        f"{p['pipeline_images_per_s']:.0f} | {p['bare_images_per_s']:.0f} | **{p['efficiency']:.2f}** | "
        f"{p['pipeline_peak_mb']:.0f} / {p['bare_peak_mb']:.0f} |",
        "",
        f"Reference: per episode / per task, encoder call on its images, autograd inner loop; fp32, "
        f"contiguous tensors, nn.BatchNorm2d. Meta-test accuracy on the {t['episodes_compared']} episodes "
        f"both ran: reference {t['accuracy_reference']:.2f}%, mtl in fp32 {t['accuracy_fast_fp32']:.2f}% "
        f"({same} per episode), mtl as run {t['accuracy_fast']:.2f}% ({t['episodes_equal_fast']} episodes "
        f"equal). Meta-train first-step loss: reference {m['first_step_loss_reference']:.6f}, mtl in fp32 "
        f"{m['first_step_loss_fast_fp32']:.6f}, as run {m['first_step_loss_fast']:.6f}.",
        "",
        *_method_lines(r),
        "",
        "| meta-train scaling | mtl tasks/s | reference tasks/s | ratio |",
        "|---|---:|---:|---:|",
    ]
    for row in r["scaling"]:
        lines.append(
            f"| {row['way']}-way {row['shot']}-shot, {row['inner_steps']} steps | "
            f"{row['fast_tasks_per_s']:.2f} | {row['reference_tasks_per_s']:.2f} | {row['speedup']:.1f}x |"
        )
    return lines
