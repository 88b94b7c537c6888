"""Silence third-party progress bars and chatter while models load.

transformers draws "Loading weights" and "Writing model shards" bars and logs
warnings on every load; huggingface_hub draws download bars. A metalora run
reports its own progress, so these are turned off once per process. The bar
of transformers' GGUF de-quantisation is plain ``tqdm`` and is silenced by
:func:`quiet_stderr` around the conversion instead.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator

_done = False


def quiet_transformers() -> None:
    """Turn off transformers' and huggingface_hub's progress bars and info/warning logs."""
    global _done
    if _done:
        return
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    disable_progress_bars()
    _done = True


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Swallow what third-party code writes to ``sys.stderr`` (bars drawn with plain tqdm)."""
    with contextlib.redirect_stderr(io.StringIO()):
        yield
