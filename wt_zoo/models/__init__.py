"""The zoo's model families; importing this package registers them with timm."""
from .implicit_resnet import MODEL_SIZES, ImplicitBlock, ImplicitResNet, UnrolledImplicit
from .wt_resnet import WTResNet
from .wtsm_resnet import WTSMResNet
from .deq_resnet import DEQResNet, EquilibriumImplicit
