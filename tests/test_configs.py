"""Every shipped flag file parses as isic-train flags, with the values its header promises."""
import copy
import glob
import os

import pytest
from absl import flags

from launch.commands import train  # noqa: F401  (defines the isic-train flags)

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "launch", "configs")
FILES = sorted(glob.glob(os.path.join(CONFIG_DIR, "*.flags")))


def _parse(path: str) -> flags.FlagValues:
    values = flags.FlagValues()
    for name, flag in flags.FLAGS._flags().items():  # pylint: disable=protected-access
        if flags.FLAGS.find_module_defining_flag(name) == train.__name__:
            values[name] = copy.deepcopy(flag)  # parsing must not touch the global FLAGS
    values(["isic-train", f"--flagfile={path}", "--data_dir=d", "--model_dir=m"])
    return values


def test_every_config_is_found():
    assert {os.path.basename(f) for f in FILES} >= {
        "demo.flags", "isic2017_sample_cpu.flags", "isic2018_full_gpu.flags"}


@pytest.mark.parametrize("path", FILES, ids=os.path.basename)
def test_config_parses_and_documents_itself(path):
    values = _parse(path)  # an unknown flag or a bad value raises here
    assert values.epochs > 0 and values.batch_size > 0 and values.base_filters > 0
    with open(path) as f:
        assert f.readline().startswith("#"), "a flag file starts with a header saying what it is"


def test_full_scale_config_is_the_original_setting():
    values = _parse(os.path.join(CONFIG_DIR, "isic2018_full_gpu.flags"))
    assert (values.base_filters, values.batch_size, values.epochs) == (64, 32, 20)
    assert values.precision == "auto"  # mixed float16 on GPUs


def test_bn_momentum_flag_default_is_the_models():
    # launch/commands/train.py cannot import model.unet (that would load Keras for --help), so the
    # default is written twice; this keeps the copies equal.
    from model import unet
    assert flags.FLAGS["bn_momentum"].default == unet.BN_MOMENTUM
