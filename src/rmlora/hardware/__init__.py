"""Tiles, DAC/ADC, analogue layers and deployment of torch models onto a chip."""

from rmlora.hardware.calibration import calibrate
from rmlora.hardware.chip import ArrayHandle, Chip, Placement, ProgramStats, SimulatedChip
from rmlora.hardware.deploy import ProgrammingReport, analog_layers, deploy, redeploy
from rmlora.hardware.factory import BACKENDS, make_chip
from rmlora.hardware.layers import AnalogConv1d, AnalogConv2d, AnalogGroupedConv2d, AnalogLayer, AnalogLinear

__all__ = ["calibrate", "BACKENDS", "make_chip", "AnalogConv1d", "AnalogConv2d", "AnalogGroupedConv2d", "AnalogLayer", "AnalogLinear", "ArrayHandle", "Chip", "Placement",
           "ProgramStats", "ProgrammingReport", "SimulatedChip", "analog_layers", "deploy", "redeploy"]
