# vmfleet example: a GPU machine image with the CUDA driver baked in, so that jobs do not pay for
# the installation at boot. The steps are the operations guide's "Running GPU Executors" ones;
# pick the CUDA repository package that matches your base image and GPU.
# Build:    packer init gpu.pkr.hcl && packer build -var region=us-east-1 gpu.pkr.hcl
# Register: vmfleet images register --packer-manifest packer-manifest.json --name cuda --version 12-01 --kind gpu
#           vmfleet images promote cuda 12-01 --alias gpu-default

packer {
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = ">= 1.2.0"
    }
  }
}

variable "region" {
  type    = string
  default = "us-east-1"
}

variable "cuda_repo_deb_url" {
  type        = string
  description = "URL of NVIDIA's CUDA repository package for the base image (the guide's example used CUDA 8.0 for Ubuntu 14.04)."
  default     = "https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2204/x86_64/cuda-keyring_1.1-1_all.deb"
}

source "amazon-ebs" "gpu" {
  region        = var.region
  instance_type = "g4dn.xlarge"
  ssh_username  = "ubuntu"
  ami_name      = "vmfleet-gpu-{{timestamp}}"
  imds_support  = "v2.0"
  launch_block_device_mappings {
    device_name           = "/dev/sda1"
    volume_size           = 60
    volume_type           = "gp3"
    delete_on_termination = true
  }
  source_ami_filter {
    filters = {
      name                = "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-*"
      virtualization-type = "hvm"
    }
    owners      = ["099720109477"]
    most_recent = true
  }
}

build {
  name    = "gpu"
  sources = ["source.amazon-ebs.gpu"]

  provisioner "shell" {
    execute_command = "sudo -E bash -eux '{{ .Path }}'"
    environment_vars = ["CUDA_REPO_DEB_URL=${var.cuda_repo_deb_url}"]
    inline = [
      "export DEBIAN_FRONTEND=noninteractive",
      "apt-get update",
      # The guide's steps: kernel headers for the running kernel, NVIDIA's repository, cuda.
      "apt-get install -y linux-headers-$(uname -r) linux-image-$(uname -r) wget",
      "wget -q -O /tmp/cuda-repo.deb \"$CUDA_REPO_DEB_URL\"",
      "dpkg -i /tmp/cuda-repo.deb",
      "apt-get update",
      "apt-get install -y cuda",
      # Docker and the circleci user, as in linux.pkr.hcl.
      "apt-get install -y docker.io",
      "id circleci || useradd --create-home --shell /bin/bash circleci",
      "usermod -aG docker circleci",
      "echo 'circleci ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/circleci && chmod 0440 /etc/sudoers.d/circleci",
      "cloud-init clean --logs",
    ]
  }

  # The guide runs nvidia-smi only to test; a reboot loads the new driver first.
  provisioner "shell" {
    inline            = ["sudo reboot"]
    expect_disconnect = true
  }
  provisioner "shell" {
    pause_before = "30s"
    inline       = ["nvidia-smi"]
  }

  post-processor "manifest" {
    output     = "packer-manifest.json"
    strip_path = true
    custom_data = {
      arch = "x86_64"
      kind = "gpu"
    }
  }
}
