#!/bin/sh
# Playwright starts this as its browser: Debian's chromium inside the lab namespace $QE_NETNS, so the page
# is fetched from a LAN host, as a user's laptop would. Playwright's pipe (fds 3 and 4) passes through.
exec ip netns exec "$QE_NETNS" /usr/bin/chromium "$@"
