"""`--config=configs/classify.py[:arg]`: the config is `detector/configs/classify.py`, in the
package so that an installed detector has it; this file lets the command
name it by path."""

from detector.configs.classify import get_config  # pylint: disable=unused-import
