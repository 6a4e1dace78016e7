"""`--config=configs/resnet50.py[:arg]`: the config is `detector/configs/resnet50.py`, in the
package so that an installed detector has it; this file lets the command
name it by path."""

from detector.configs.resnet50 import get_config  # pylint: disable=unused-import
