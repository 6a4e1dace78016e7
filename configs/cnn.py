"""`--config=configs/cnn.py[:arg]`: the config is `detector/configs/cnn.py`, in the
package so that an installed detector has it; this file lets the command
name it by path."""

from detector.configs.cnn import get_config  # pylint: disable=unused-import
