include $(sort $(wildcard $(BR2_EXTERNAL_QUICETHER_PATH)/package/*/*.mk))
