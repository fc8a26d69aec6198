"""`hmdn data fetch movielens-100k`: MovieLens-100K in GroupLens' ml-100k layout.

PyPI is reachable where the GroupLens site may not be: the `recbole==1.2.1` wheel ships
ml-100k as RecBole atomic files (`recbole/dataset_example/ml-100k/ml-100k.{inter,user,
item}`). The wheel is downloaded with `pip download --no-deps` (recbole is never
installed), the three files are read out of it and rewritten in the original layout the
`movielens` source reads (and that GroupLens' own ml-100k.zip has):

  u.data  user_id \\t item_id \\t rating \\t timestamp
  u.user  user_id|age|gender|occupation|zip_code
  u.item  item_id|title|release date|video release date|IMDb URL|19 genre flags (latin-1)

RecBole keeps the release year only, so the release date is written `01-Jan-<year>` and
the URL empty. The data's licence forbids redistribution: never commit it.
"""
import glob
import os
import subprocess
import sys
import tempfile
import zipfile
from typing import Dict

from beam_jobs.sources import ML_GENRES

WHEEL = "recbole==1.2.1"
PREFIX = "recbole/dataset_example/ml-100k/ml-100k"
EXPECTED = {"ratings": 100_000, "users": 943, "items": 1_682}


class FetchError(RuntimeError):
  """The download or the wheel's contents are not what is expected."""


def _rows(text: str):
  lines = [l for l in text.splitlines() if l.strip()]
  header = [h.split(":")[0] for h in lines[0].split("\t")]
  for line in lines[1:]:
    cells = line.split("\t")
    cells += [""] * (len(header) - len(cells))
    yield dict(zip(header, cells))


def convert(inter: str, user: str, item: str, out_dir: str) -> Dict[str, int]:
  """RecBole atomic files (text) -> u.data, u.user, u.item in out_dir."""
  os.makedirs(out_dir, exist_ok=True)
  n = {"ratings": 0, "users": 0, "items": 0}
  with open(os.path.join(out_dir, "u.data"), "w", encoding="latin-1") as f:
    for r in _rows(inter):
      f.write(f"{r['user_id']}\t{r['item_id']}\t{int(float(r['rating']))}\t"
              f"{int(float(r['timestamp']))}\n")
      n["ratings"] += 1
  with open(os.path.join(out_dir, "u.user"), "w", encoding="latin-1") as f:
    for r in _rows(user):
      f.write(f"{r['user_id']}|{r['age']}|{r['gender']}|{r['occupation']}|"
              f"{r['zip_code']}\n")
      n["users"] += 1
  with open(os.path.join(out_dir, "u.item"), "w", encoding="latin-1",
            errors="replace") as f:
    for r in _rows(item):
      genres = set(r.get("class", "").split())
      unknown = genres - set(ML_GENRES)
      if unknown:
        raise FetchError(f"item {r['item_id']}: unknown genre(s) {sorted(unknown)}")
      flags = "|".join("1" if g in genres else "0" for g in ML_GENRES)
      year = r.get("release_year", "").strip()
      date = f"01-Jan-{year}" if year else ""
      title = r["movie_title"].replace("|", "/")
      f.write(f"{r['item_id']}|{title}|{date}|||{flags}\n")
      n["items"] += 1
  return n


def fetch_movielens_100k(out_dir: str) -> Dict[str, object]:
  """Downloads the wheel, writes the ml-100k layout into out_dir; returns counts."""
  with tempfile.TemporaryDirectory() as tmp:
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         WHEEL, "-d", tmp], capture_output=True, text=True)
    wheels = glob.glob(os.path.join(tmp, "recbole-*.whl"))
    if proc.returncode != 0 or not wheels:
      raise FetchError(f"`pip download --no-deps {WHEEL}` failed:\n"
                       f"{proc.stderr.strip()[-2000:]}")
    with zipfile.ZipFile(wheels[0]) as z:
      try:
        texts = {k: z.read(f"{PREFIX}.{k}").decode("utf-8", errors="replace")
                 for k in ("inter", "user", "item")}
      except KeyError as e:
        raise FetchError(f"{wheels[0]} has no {e}: not the expected recbole wheel")
  counts = convert(texts["inter"], texts["user"], texts["item"], out_dir)
  if counts != EXPECTED:
    raise FetchError(f"MovieLens-100K should have {EXPECTED}, the wheel gave {counts}")
  with open(os.path.join(out_dir, "PROVENANCE.txt"), "w") as f:
    f.write(f"MovieLens-100K (GroupLens), from the PyPI wheel {WHEEL} "
            f"({PREFIX}.{{inter,user,item}}), rewritten in the ml-100k layout by "
            "`hmdn data fetch movielens-100k`. Research use only; do not "
            "redistribute.\n")
  return dict(counts, **{"from": WHEEL})
