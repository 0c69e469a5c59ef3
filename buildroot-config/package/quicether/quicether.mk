################################################################################
#
# quicether
#
################################################################################

# Built from this source tree (the external tree lives inside it), not downloaded.
QUICETHER_VERSION = 0.1.0
QUICETHER_SITE = $(BR2_EXTERNAL_QUICETHER_PATH)/..
QUICETHER_SITE_METHOD = local
QUICETHER_LICENSE = Apache-2.0
QUICETHER_SETUP_TYPE = maturin

# Both images install the same overlay (units, default config); see rootfs-overlay/README.md.
define QUICETHER_INSTALL_OVERLAY
	$(BR2_EXTERNAL_QUICETHER_PATH)/board/common/install-overlay.sh $(@D)/rootfs-overlay $(TARGET_DIR)
endef
QUICETHER_POST_INSTALL_TARGET_HOOKS += QUICETHER_INSTALL_OVERLAY

$(eval $(python-package))
