"""The networks' parts: summary networks, conditional flows, hand-made statistics, the regression shift, and one
config per part (`mlnpe.networks.config`)."""

from .config import FlowConfig, NetworkConfig, ShiftConfig, StatisticsConfig, SufficientConfig, SummaryConfig

__all__ = ["NetworkConfig", "SummaryConfig", "SufficientConfig", "FlowConfig", "StatisticsConfig", "ShiftConfig"]
