from twisted.application.service import ServiceMaker

raps = ServiceMaker(
    "raps",
    "redis_ajax_push.tap",
    "Serve task progress from Redis to web pages: poll and watch over HTTP.",
    "raps",
)
