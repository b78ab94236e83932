"""zoprune's built-in components, registered through the ``zoprune`` entry-point group like any third-party plugin."""
