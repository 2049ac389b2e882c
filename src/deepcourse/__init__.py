"""deepcourse: train the networks of a deep-learning course from TOML recipes.

Plugins extend it through the `deepcourse.plugins` entry-point group; see `deepcourse.registry` and
`deepcourse.task` for the public plugin API.
"""
__version__ = "0.1.0"
