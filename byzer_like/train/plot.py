"""The loss curve of a run, saved as a PNG beside the model (matplotlib, no display needed)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence


SAME_AS_LOSS = ("eval_loss", "eval_mean_token_logprob")  # on the loss axis already (or its negative)
# on the second axis: preference training's reward margin (chosen minus rejected reward, TRL's `rewards/margins`),
# ppo's mean reward of each step's answers and its KL to the reference
MARGINS = ("rewards/margins", "reward", "kl")


def loss_curve(history: Sequence[dict], out_png: str | Path, *, title: str = "") -> str | None:
    """Plot `loss` (and `eval_loss` when present) against `step`, and the evalTable metrics (`eval_exact_match`,
    `eval_perplexity`, ...) on a second axis (logarithmic when perplexity spans more than 10x); None when
    there is nothing to plot. `eval_mean_token_logprob` is left out: `eval_loss` is its negative. Preference
    training's `rewards/margins` (and its `eval_rewards/margins`) and ppo's `reward` and `kl` go on the second
    axis too."""
    train = [(h["step"], h["loss"]) for h in history if h.get("loss") is not None]
    evals = [(h["step"], h["eval_loss"]) for h in history if h.get("eval_loss") is not None]
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.6), dpi=100)
    ax = fig.subplots()
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1.5)
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss", linewidth=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    # task metrics measured on evalTable (eval_exact_match, ...) beside the loss, on their own axis
    names = sorted({k for h in history for k, v in h.items() if (k.startswith("eval_") or k in MARGINS)
                    and k not in SAME_AS_LOSS and isinstance(v, (int, float))})
    handles, labels = ax.get_legend_handles_labels()
    if names:
        right = ax.twinx()
        for k, name in enumerate(names):  # colours after the loss axis' two
            points = [(h["step"], h[name]) for h in history if isinstance(h.get(name), (int, float))]
            right.plot(*zip(*points), "s--", label=name, linewidth=1.2, color=f"C{k + 2}")
        ppl = [h["eval_perplexity"] for h in history if isinstance(h.get("eval_perplexity"), (int, float))]
        if ppl and min(ppl) > 0 and max(ppl) > 10 * min(ppl):
            right.set_yscale("log")
        right.set_ylabel("eval metric" if all(n.startswith("eval_") for n in names) else "metric")
        more = right.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    ax.legend(handles, labels)
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return str(out)


__all__ = ["loss_curve"]
