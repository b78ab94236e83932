"""The ``lmms_eval.models`` entry point: lmms-eval imports this on every start, so it names the model classes by
string path and imports nothing heavy (``lmms_eval.models.registry_v2`` is already loaded when it is called)."""


def model_manifest():
    """The manifest of lmms-eval's ``--model zoprune``: a chat class and its simple twin (``--force_simple``)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(
        model_id="zoprune",
        chat_class_path="zoprune.integrations.lmms_eval.ZopruneChat",
        simple_class_path="zoprune.integrations.lmms_eval.ZopruneSimple",
    )
