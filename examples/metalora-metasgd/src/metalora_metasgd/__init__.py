"""``metasgd``: Meta-SGD for metalora, an example third-party plugin.

metalora finds this module through the entry point declared in this
package's ``pyproject.toml``::

    [project.entry-points.metalora]
    metasgd = "metalora_metasgd"

and calls the ``@hookimpl`` functions it defines.
"""

from metalora import hookimpl
from metalora_metasgd.learner import MetaSGDLearner, MetaSGDSettings

__version__ = "0.1.0"


@hookimpl
def register_learners(register):
    """Register the ``metasgd`` learner."""
    register(MetaSGDLearner)


__all__ = ["MetaSGDLearner", "MetaSGDSettings", "register_learners"]
