"""Running glassmesh under systemd: the unit files it ships, and sd_notify (notify.py).

The units (glassmesh-proxy.service, glassmesh-control.service) and the
sysusers.d line for their user are package data, so a host installed from the
wheel has them without the source tree; `glassmesh install-units` writes them.
"""
