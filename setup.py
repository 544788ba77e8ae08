from setuptools import setup

# The twistd plugin ships as twisted/plugins/raps.py, a module of the
# twisted.plugins namespace, which has no __init__.py of its own here.
#
# twistd finds plugins by scanning sys.path for twisted/plugins folders, so an
# editable install must put this checkout on sys.path. The "compat" editable
# mode does that with a .pth file; the default mode uses an import hook that
# twistd's plugin scan cannot see.
setup(
    packages=["redis_ajax_push", "twisted.plugins"],
    package_data={
        "twisted.plugins": ["raps.py"],
        "redis_ajax_push": ["static/*.js", "static/*.html"],
    },
    options={"editable_wheel": {"mode": "compat"}},
)
