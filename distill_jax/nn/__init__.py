"""Networks: layers, models (LeNet, AlexCifarNet, ConvNet), initialisers."""
