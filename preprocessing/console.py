"""Console-script plumbing shared by every `isic-*` entry point."""

import sys

from absl import app
from absl import flags


def run(main, module_name: str) -> None:
    """`app.run(main)` for a console script, with a useful `--help`.

    absl's --help shows the docstring and key flags of sys.argv[0]; under a console
    script that is a generated stub with neither, so lend it those of `module_name`.
    """
    module = sys.modules[module_name]
    if sys.modules["__main__"].__doc__ is None:
        sys.modules["__main__"].__doc__ = module.__doc__
    for flag in flags.FLAGS.get_key_flags_for_module(module):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    app.run(main)
