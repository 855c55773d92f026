"""Writing files so that a reader sees the old file or the new one, never half."""

import contextlib
import os
import secrets
from pathlib import Path


@contextlib.contextmanager
def atomic_write(path):
    """Yield a binary handle whose contents replace path when the block ends.

    The data goes to a new file beside path, is flushed to disk, and is renamed
    over path only if the block finishes; otherwise the new file is removed and
    path keeps its old contents. The file gets the permissions of any new file
    (0o666 less the umask).
    """
    final = Path(path)
    tmp = final.with_name(f".{final.name}.{secrets.token_hex(6)}.tmp")
    # O_EXCL refuses to reuse a stray file of the same name.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
