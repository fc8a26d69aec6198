"""How much a MovieLens-100K rating's click (rating >= 4) owes to the user's earlier
ratings, which a history of the movies rated does not carry.

  python -m benchmarks.movielens_headroom --raw=data/ml-100k [--quantile=0.8]

With the time split of docs/sequences.md (eval = the last 20% of ratings by
timestamp), counts alone, no model: the eval AUC of the item's click rate in training,
of the user's click rate over their strictly earlier ratings (both shrunk to the global
rate with 5 pseudo-ratings), and of the two logits summed; the share of eval ratings
whose user has no training rating, and the eval histories' lengths. Prints one line
each. A diagnostic, not a test.
"""
import argparse
import collections
import os

import numpy as np

PRIOR_WEIGHT = 5.0


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
  """Rank AUC with tied scores sharing their mean rank."""
  order = np.argsort(scores, kind="mergesort")
  s, y = scores[order], labels[order]
  _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
  ends = np.cumsum(counts)
  ranks = ((ends - counts + 1 + ends) / 2.0)[inverse]
  pos = y.sum()
  return float((ranks[y == 1].sum() - pos * (pos + 1) / 2) / (pos * (len(y) - pos)))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--raw", required=True, help="folder holding u.data")
  parser.add_argument("--quantile", type=float, default=0.8,
                      help="time split: eval = ratings after this timestamp quantile")
  args = parser.parse_args()
  data = np.loadtxt(os.path.join(args.raw, "u.data"), dtype=np.int64)
  user, item, rating, ts = data.T
  click = (rating >= 4).astype(float)
  rate = click.mean()
  evaluated = ts > np.quantile(ts, args.quantile)
  train = ~evaluated

  item_clicks = collections.Counter(item[train & (click == 1)])
  item_rows = collections.Counter(item[train])
  item_rate = np.array([(item_clicks[i] + rate * PRIOR_WEIGHT) /
                        (item_rows[i] + PRIOR_WEIGHT) for i in item])
  user_rate, earlier = np.zeros(len(click)), np.zeros(len(click))
  rows_of = collections.defaultdict(list)
  for k in np.argsort(ts, kind="mergesort"):
    rows_of[user[k]].append(k)
  for rows in rows_of.values():  # in time order; a tie is not earlier
    clicks = count = j = 0
    for k in rows:
      while ts[rows[j]] < ts[k]:
        clicks, count, j = clicks + click[rows[j]], count + 1, j + 1
      user_rate[k] = (clicks + rate * PRIOR_WEIGHT) / (count + PRIOR_WEIGHT)
      earlier[k] = count

  def logit(p):
    return np.log(p / (1 - p))

  y = click[evaluated]
  seen = set(user[train])
  print(f"eval ratings: {evaluated.sum()}; of users with a training rating: "
        f"{np.mean([u in seen for u in user[evaluated]]):.3f}; with no earlier rating: "
        f"{np.mean(earlier[evaluated] == 0):.3f}; median earlier ratings: "
        f"{np.median(earlier[evaluated]):.0f}")
  print(f"eval AUC, item's training click rate: {auc(y, item_rate[evaluated]):.4f}")
  print(f"eval AUC, user's earlier click rate: {auc(y, user_rate[evaluated]):.4f}")
  print("eval AUC, both (logits summed): "
        f"{auc(y, logit(item_rate[evaluated]) + logit(user_rate[evaluated])):.4f}")


if __name__ == "__main__":
  main()
