"""Training-form re-parameterizable blocks, small networks built from them, and ONNX export.

- ``models.blocks``: the blocks, each with a hand-written ``switch_to_deploy()`` (one Conv2d).
- ``models.nets``: ``NETWORKS`` registry, ``deploy_copy``, ``randomize_bn``.
- ``models.export``: ``export(net, input_shape, path, form, deploy=False)`` for ``FORMS``.
- ``models.bundle``: regenerates the bundled ``models/convbn_stack.onnx`` and ``repvgg.onnx``.
"""
