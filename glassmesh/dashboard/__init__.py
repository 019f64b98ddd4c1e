"""The dashboard's page: plain HTML, CSS and JavaScript, shipped as package data and served by the control plane.

Nothing here talks to anything but the control plane that served it (its
Content-Security-Policy allows nothing else), and nothing is fetched from the
internet: the service graph and the latency chart are SVG drawn by app.js.
See control/dashboard.py for the routes and the login.
"""
