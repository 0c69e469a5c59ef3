#!/bin/sh
# busybox udhcpc calls this with the lease in its environment: apply it to the lab host's port and write
# it to $LEASE_FILE for the test to read.
# shellcheck disable=SC2154  # interface, ip, mask, router, dns, domain come from udhcpc
case "$1" in
    bound|renew)
        ip addr flush dev "$interface"
        ip addr add "$ip/$mask" dev "$interface"
        ip route replace default via "$router" dev "$interface"
        echo "ip=$ip mask=$mask router=$router dns=$dns domain=$domain" > "$LEASE_FILE"
        ;;
esac
exit 0
