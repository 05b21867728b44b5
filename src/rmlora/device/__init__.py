"""Cell physics of 1T1R RRAM: presets, weight mapping, write-verify, noise."""

from rmlora.device.params import DeviceParams, list_presets, load_preset
from rmlora.device.physics import WriteVerifyResult, program, read

__all__ = ["DeviceParams", "WriteVerifyResult", "list_presets", "load_preset", "program", "read"]
