"""Which publish rule picks the model that is better on test? For every ordered pair of the six 10%-mask runs (one
serving, the other a round's new model), the decision of the fixed rule (publish unless val Dice is more than
PUBLISH_TOLERANCE lower) and of the shipped paired rule (the margin app.rounds.publish_margin gives from the
per-image differences), scored by the test lesion Dice the decision then serves.
One-off, twenty-fourth session.

    python benchmarks/results/presence_probe/publish_rule.py
"""
import itertools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from app.rounds import PUBLISH_TOLERANCE, publish_margin  # noqa: E402
from benchmarks.results.presence_probe.publish_noise import ROWS, gated  # noqa: E402


def scores(run: str) -> dict[str, float]:
    """Per-image val scores as a model stores them (app.rounds.val_summary)."""
    ids = [r["id"] for r in ROWS[run]["val"] if r["lesion"]]
    return dict(zip(ids, gated(run, "val").tolist()))


def main() -> None:
    served = {"fixed": [], "paired": []}
    for old, new in itertools.permutations(ROWS, 2):
        d = gated(new, "val") - gated(old, "val")
        margin, se = publish_margin(scores(new), scores(old))
        test_gain = gated(new, "test").mean() - gated(old, "test").mean()
        rules = {"fixed": d.mean() >= -PUBLISH_TOLERANCE, "paired": d.mean() >= -margin}
        for rule, publish in rules.items():
            served[rule].append(test_gain if publish else 0.0)
        if rules["fixed"] != rules["paired"]:
            print(f"{old} serving, {new} new: val {d.mean():+.3f} (se {se:.3f}), test {test_gain:+.3f}: "
                  f"fixed {'publishes' if rules['fixed'] else 'holds back'}, "
                  f"paired {'publishes' if rules['paired'] else 'holds back'}")
    for rule, gains in served.items():
        held = sum(g == 0.0 for g in gains)
        print(f"{rule}: holds back {held} of {len(gains)}; mean test lesion Dice change per decision "
              f"{np.mean(gains):+.4f}")


if __name__ == "__main__":
    main()
