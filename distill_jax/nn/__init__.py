"""Networks: layers, models (LeNet, AlexCifarNet, ConvNet), initialisers,
and networks with BatchNorm statistics (`stat_models`, `batchnorm`).
"""
