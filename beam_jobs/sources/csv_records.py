"""CSV records as RFC 4180 has them: a quoted field may hold line breaks, so one record
is one or more lines of the file.

The readers cut files into lines; `RecordJoiner` joins the lines of one record again,
following the csv module's quoting (a quote opens a quoted field only at the start of a
field, "" is a quote inside one), with compiled regexes: only a line holding a quote is
looked at, and a line that breaks the grammar (`"a"b`) ends its record there, as the
csv module's error does, so one stray quote costs one dead letter, not the file.
"""
import re
from typing import BinaryIO, List

QUOTE = b'"'
# A record still open after this many bytes ends at that line (a dead letter: its quote
# does not close in it), so one stray quote cannot hold the rest of a file in memory.
# No valid record is near it: a cell is at most spec.MAX_CELL_CHARS characters.
MAX_RECORD_BYTES = 1 << 20


class RecordJoiner:
  """Lines (bytes, each without its "\\n"; a "\\r" of a CRLF kept) in file order ->
  records: the lines of a record joined by "\\n" (a line break inside a quoted field is
  the file's own, CRLF or LF), the record's final "\\r" dropped as Beam's text reader
  drops it. Holds the lines of a record still open at the end of a batch."""

  def __init__(self, delimiter: str):
    d = re.escape(delimiter.encode("utf-8"))
    quoted_rest = rb'(?:[^"]|"")*+'  # inside a quoted field, up to its closing quote
    field = rb'(?:"' + quoted_rest + rb'"|(?:[^"' + d + rb'][^' + d + rb']*+)?(?=' + \
        d + rb'|\Z))'
    more = rb'(?:' + d + field + rb')*+'
    # A record's first line: complete, or ending inside a quoted field.
    self._closed = re.compile(field + more)
    self._opens = re.compile(rb'(?:' + field + d + rb')*+"' + quoted_rest)
    # A line inside a quoted field: still inside it, or closing it and opening another
    # before its end (else it closes the record, complete or broken).
    self._inside = re.compile(quoted_rest)
    self._reopens = re.compile(quoted_rest + rb'"' + more + d + rb'"' + quoted_rest)
    self._open: List[bytes] = []
    self._open_bytes = 0

  @property
  def is_open(self) -> bool:
    """Inside a record: the next line continues it."""
    return bool(self._open)

  def feed(self, lines: List[bytes]) -> List[bytes]:
    """The records these lines complete (a record still open waits for more)."""
    joined = b"\n".join(lines)
    if not self._open and QUOTE not in joined:  # each line a record (C speed)
      if b"\r" not in joined or not lines:
        return lines
      return (joined + b"\n").replace(b"\r\n", b"\n")[:-1].split(b"\n")
    out = []
    for line in lines:
      text = line[:-1] if line[-1:] == b"\r" else line
      if self._open:
        self._open.append(line)
        self._open_bytes += len(line) + 1
        if (self._inside.fullmatch(text) or self._reopens.fullmatch(text)) and \
            self._open_bytes <= MAX_RECORD_BYTES:
          continue
        out.append(self._take())  # closed, broken or too long: the record ends here
      elif QUOTE not in text or self._closed.fullmatch(text) or \
          not self._opens.fullmatch(text):
        out.append(text)
      else:
        self._open.append(line)
        self._open_bytes = len(line) + 1
    return out

  def finish(self) -> List[bytes]:
    """The record still open at the end of the file (its quote never closes: the
    parser dead-letters it)."""
    return [self._take()] if self._open else []

  def _take(self) -> bytes:
    record = b"\n".join(self._open)
    self._open = []
    return record[:-1] if record[-1:] == b"\r" else record


SCAN_CHUNK_BYTES = 8 << 20  # `record_starts` reads the file in blocks of this size


def record_starts(f: BinaryIO, targets: List[int], delimiter: str) -> List[int]:
  """For each offset of `targets` (increasing), the offset of the first record that
  starts at or after it in the file `f` (read from its start; the file's size when
  none does): where a reader of a byte range may start. A block with no quote outside
  an open record is skipped at C speed (each of its lines starts a record)."""
  joiner = RecordJoiner(delimiter)
  out: List[int] = []
  ti, offset, rest = 0, 0, b""
  while ti < len(targets):
    chunk = f.read(SCAN_CHUNK_BYTES)
    data = rest + chunk
    cut = data.rfind(b"\n") + 1 if chunk else len(data)
    block, rest = data[:cut], data[cut:]
    if not block and not chunk:
      break
    if not joiner.is_open and QUOTE not in block:
      while ti < len(targets) and targets[ti] < offset + len(block):
        t = targets[ti]
        nl = block.find(b"\n", t - offset - 1) if t > offset else -1
        out.append(offset if t <= offset else offset + nl + 1 if nl >= 0
                   else offset + len(block))
        ti += 1
    else:
      pos = offset
      lines = block.split(b"\n")
      if block.endswith(b"\n"):
        lines.pop()
      for line in lines:
        if not joiner.is_open:
          while ti < len(targets) and targets[ti] <= pos:
            out.append(pos)
            ti += 1
        joiner.feed([line])
        pos += len(line) + 1
    offset += len(block)
  return out + [offset] * (len(targets) - len(out))
