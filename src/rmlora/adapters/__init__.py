"""Digital LoRA adapters (peft) on analogue layers, INT-n weights, SRAM capacity, digital rows."""

from rmlora.adapters.head import DigitalRows
from rmlora.adapters.lora import (AdapterSpec, active_adapters, adapter_bits, adapter_parameters, adapters,
                                  add_adapter, analog_targets, delete_adapter, load_adapter, logical_name,
                                  resolve_targets, save_adapter, set_active)
from rmlora.adapters.sram import SramBuffer

__all__ = ["AdapterSpec", "DigitalRows", "SramBuffer", "active_adapters", "adapter_bits", "adapter_parameters",
           "adapters", "add_adapter", "analog_targets", "delete_adapter", "load_adapter", "logical_name",
           "resolve_targets", "save_adapter",
           "set_active"]
