from twisted.application.service import ServiceMaker

sscontrol_signaling = ServiceMaker(
    "sscontrol-signaling", "sscontrold.tap", "sscontrol signaling, TURN credentials and session pairing",
    "sscontrol-signaling")
