"""The zoo's model families; importing this package registers them with timm."""
from .implicit_resnet import MODEL_SIZES, ImplicitBlock, ImplicitResNet, UnrolledImplicit
from .wt_resnet import WTResNet
from .wtsm_resnet import WTSMResNet
from .deq_resnet import DEQResNet, EquilibriumImplicit
from .mdeq import MDEQ_SIZES, MDEQ, ImplicitMDEQ, MultiResolutionBlock, UnrolledBranches, WTMDEQ, WTSMMDEQ
