"""MovieLens-100K in GroupLens' ml-100k layout: its constants and line parsers (read by
the `movielens` source, beam_jobs/sources/movielens.py) and `hmdn data fetch
movielens-100k`, which writes it. No Beam here.

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
import re
import subprocess
import sys
import tempfile
import zipfile
from typing import Dict, List, Tuple

from hmdn.features import spec as spec_lib

ML_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy",
             "Crime", "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror",
             "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")
ML_LIKE = 4  # label: rating >= 4 is a "click"
ENCODING = "latin-1"  # u.item has accented titles; not UTF-8
# The three files of the layout, by kind: ratings, users, items.
RATINGS, USERS, ITEMS = "data", "user", "item"
FILES = {RATINGS: "u.data", USERS: "u.user", ITEMS: "u.item"}

WHEEL = "recbole==1.2.1"
PREFIX = "recbole/dataset_example/ml-100k/ml-100k"
EXPECTED = {"ratings": 100_000, "users": 943, "items": 1_682}


def layout_files(folder: str) -> Dict[str, str]:
  """{kind: path} of the three files in an ml-100k folder (`--raw` may name u.data)."""
  base = folder.rstrip("/")
  if base.endswith("/" + FILES[RATINGS]):
    base = base[:-len("/" + FILES[RATINGS])]
  return {k: f"{base}/{name}" for k, name in FILES.items()}


# --- Lines --------------------------------------------------------------------------------
def parse_rating_line(line: str) -> Tuple[str, Dict[str, str]]:
  """u.data `user\\titem\\trating\\ttimestamp` -> (user_id, cells with click); raises
  SpecError."""
  cells = line.rstrip("\r\n").split("\t")
  if len(cells) != 4:
    raise spec_lib.SpecError(f"expected 4 tab-separated fields (user item rating "
                             f"timestamp), got {len(cells)}")
  user, item, rating, ts = cells
  try:
    value = float(rating)
  except ValueError:
    raise spec_lib.SpecError(f"rating {rating!r} is not a number")
  if not 1 <= value <= 5:
    raise spec_lib.SpecError(f"rating {rating!r} is not in 1..5")
  try:
    float(ts)
  except ValueError:
    raise spec_lib.SpecError(f"timestamp {ts!r} is not a number")
  return user, {"user_id": user, "item_id": item, "rating": rating, "timestamp": ts,
                "click": "1" if value >= ML_LIKE else "0"}


def parse_user_line(line: str) -> Tuple[str, Dict[str, str]]:
  """u.user `id|age|gender|occupation|zip` -> (user_id, cells); raises SpecError."""
  cells = line.rstrip("\r\n").split("|")
  if len(cells) != 5:
    raise spec_lib.SpecError(f"expected 5 |-separated fields (id|age|gender|"
                             f"occupation|zip), got {len(cells)}")
  uid, age, gender, occupation, zip_code = cells
  try:
    float(age)
  except ValueError:
    raise spec_lib.SpecError(f"age {age!r} is not a number")
  return uid, {"age": age, "gender": gender, "occupation": occupation,
               "zip_code": zip_code}


def parse_item_line(line: str) -> Tuple[str, Dict[str, object]]:
  """u.item `id|title|release date|video release|url|19 genre flags` -> (item_id,
  {title, release_year, genres, first_genre}); raises SpecError. `first_genre` is the
  first flagged genre in ML_GENRES order ("" when none is: the spec's default), one
  categorical value a genre history can hold."""
  cells = line.rstrip("\r\n").split("|")
  if len(cells) != 5 + len(ML_GENRES):
    raise spec_lib.SpecError(f"expected {5 + len(ML_GENRES)} |-separated fields "
                             f"(id|title|release date|video release|url|"
                             f"{len(ML_GENRES)} genre flags), got {len(cells)}")
  flags = cells[5:]
  if any(f not in ("0", "1") for f in flags):
    raise spec_lib.SpecError(f"genre flags must be 0 or 1, got {flags}")
  m = re.search(r"(\d{4})$", cells[2].strip())
  genres: List[str] = [g for g, f in zip(ML_GENRES, flags) if f == "1"]
  return cells[0], {"title": cells[1], "release_year": m.group(1) if m else "",
                    "genres": genres, "first_genre": genres[0] if genres else ""}


# --- Fetching -----------------------------------------------------------------------------
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
  with open(os.path.join(out_dir, FILES[RATINGS]), "w", encoding=ENCODING) as f:
    for r in _rows(inter):
      f.write(f"{r['user_id']}\t{r['item_id']}\t{int(float(r['rating']))}\t"
              f"{int(float(r['timestamp']))}\n")
      n["ratings"] += 1
  with open(os.path.join(out_dir, FILES[USERS]), "w", encoding=ENCODING) as f:
    for r in _rows(user):
      f.write(f"{r['user_id']}|{r['age']}|{r['gender']}|{r['occupation']}|"
              f"{r['zip_code']}\n")
      n["users"] += 1
  with open(os.path.join(out_dir, FILES[ITEMS]), "w", encoding=ENCODING,
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
