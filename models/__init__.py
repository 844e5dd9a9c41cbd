"""Training-form re-parameterizable blocks, small networks built from them, and ONNX export.

- ``models.blocks``: the blocks, each with a hand-written ``switch_to_deploy()`` (one Conv2d).
- ``models.hybrid``: FastViT, RepViT, RepLKNet, MobileNetV3 and ViT-MLP blocks and heads, whose
  deploy forms fold their convs, BNs and classifiers but keep activations, SE, LayerNorm and
  residuals; ``deploy_all`` deploys any nest of them.
- ``models.nets``: ``NETWORKS`` registry, ``deploy_copy``, ``randomize_bn``, ``randomize_extras``.
- ``models.export``: ``export(net, input_shape, path, form, deploy=False)`` for ``FORMS``.
- ``models.bundle``: regenerates the bundled ``models/convbn_stack.onnx`` and ``repvgg.onnx``.
"""
