"""twistd plugin: ``twistd gatekeep``. Imports gatekeep only when the plugin is used."""

from twisted.application.service import ServiceMaker

gatekeep = ServiceMaker(
    "gatekeep",
    "gatekeep.tap",
    "Protocol-detecting gateway: one port for XMPP, Matrix, the web and more",
    "gatekeep",
)
