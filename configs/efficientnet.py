"""`--config=configs/efficientnet.py[:arg]`: the config is `detector/configs/efficientnet.py`, in the
package so that an installed detector has it; this file lets the command
name it by path."""

from detector.configs.efficientnet import get_config  # pylint: disable=unused-import
