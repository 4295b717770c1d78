"""U2CB in the browser: an Open OnDemand app for the user's own container builds.

Open OnDemand's per-user NGINX starts the app through Passenger as the logged-in
user (``app.js``, a Node.js launcher, because Passenger proxies WebSockets only to
Node.js and Ruby apps, never to Python's WSGI); the launcher starts
:mod:`hpcstack.portal.app` on a private Unix socket and passes HTTP and WebSockets
through.  The page is a thin front on :class:`hpcstack.client.api.Client`.
"""
