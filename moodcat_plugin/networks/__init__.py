"""Networks: importing this package registers every built-in network (one per module)."""
from moodcat_plugin.networks.biggan_decoder import BigGANDecoder
from moodcat_plugin.networks.conditional_binary_classifier import ConditionalBinaryClassifier
from moodcat_plugin.networks.feature_comparator_cb import FeatureComparatorCb
from moodcat_plugin.networks.mcd_net import ResNet18_32x32_MCD
from moodcat_plugin.networks.moodcat_encoder import MoodcatEncoder
from moodcat_plugin.networks.moodcat_gan import MoodcatGAN
from moodcat_plugin.networks.resnet18_32x32 import ResNet18_32x32
from moodcat_plugin.networks.udg_net import ResNet18_32x32_UDG
from moodcat_plugin.networks.unet_discriminator import UNetDiscriminator

__all__ = ["BigGANDecoder", "ConditionalBinaryClassifier", "FeatureComparatorCb", "MoodcatEncoder", "MoodcatGAN", "ResNet18_32x32",
           "ResNet18_32x32_MCD", "ResNet18_32x32_UDG", "UNetDiscriminator"]
