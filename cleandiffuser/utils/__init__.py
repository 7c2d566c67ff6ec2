from .critic import DQLCritic
from .iql_networks import IDQLQNet, IDQLVNet
from .seed import set_seed

__all__ = ["DQLCritic", "IDQLQNet", "IDQLVNet", "set_seed"]
